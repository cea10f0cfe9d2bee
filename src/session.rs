//! The sans-IO core of a client connection: buffers, hello, framing and request checks.
//!
//! The blocking [`crate::Connection`] and the async front end drive the same `Session`:
//! they move bytes between a socket and [`Session::read_space`] / [`Session::output`], and
//! the session does everything else. Nothing here touches a socket or a clock.

use std::collections::{HashMap, HashSet, VecDeque};

use conclave_control::wire::client::{
    self, DaemonFrame, MAX_TARGET_GROUPS, PROTOCOL_VERSION, Service, ViewId, decode_daemon, encode,
    split_frame,
};
use conclave_control::wire::names;

use crate::error::{Error, Result};
use crate::event::Event;

/// Bytes the read buffer offers each read: large, so one read carries many small frames.
pub const READ_CHUNK: usize = 256 * 1024;

/// Buffered output beyond which `*_buffered` calls ask their front end to flush.
pub const WRITE_BATCH: usize = 128 * 1024;

/// Daemon frames may exceed the payload limit only by their headers, except a status
/// document, which we let grow to this much.
const MAX_STATUS_JSON: usize = 16 << 20;

/// State of one connection, independent of how its bytes move.
#[derive(Debug)]
pub struct Session {
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    max_payload: usize,
    max_frame: usize,
    private_name: String,
    daemon: String,
    welcomed: bool,
    /// Frame bodies read while waiting for a status answer, to hand out later in order.
    pending: VecDeque<Vec<u8>>,
    /// Set once the stream is over: the daemon's goodbye or why we gave up on the stream.
    closed: Option<String>,
    /// The id of the request queued last (0: none yet); ids count up from 1 and wrap.
    last_request: u32,
    /// Virtual Synchrony groups whose FlushRequest the application has not answered yet,
    /// with the view id to echo.
    flush_requested: HashMap<String, ViewId>,
    /// Groups this client sent FlushOk for: sending to them is refused
    /// ([`Error::Flushing`]) until their next view arrives.
    flushed: HashSet<String>,
    /// Answer every FlushRequest at once (after the output already queued).
    auto_flush_ok: bool,
    /// A FlushOk was queued automatically: the front end should write it out now.
    auto_answered: bool,
}

impl Session {
    /// Starts a session whose hello asks for `name` (empty: the daemon picks one).
    pub fn new(name: &str) -> Result<Session> {
        if !name.is_empty() {
            names::check_user(name).map_err(|source| Error::BadName {
                name: name.to_owned(),
                source,
            })?;
        }
        let mut s = Session {
            rbuf: vec![0; 2 * READ_CHUNK],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(2 * WRITE_BATCH),
            wpos: 0,
            max_payload: client::DEFAULT_MAX_PAYLOAD,
            max_frame: client::max_frame_len(MAX_STATUS_JSON),
            private_name: String::new(),
            daemon: String::new(),
            welcomed: false,
            pending: VecDeque::new(),
            closed: None,
            last_request: 0,
            flush_requested: HashMap::new(),
            flushed: HashSet::new(),
            auto_flush_ok: false,
            auto_answered: false,
        };
        encode::hello(&mut s.wbuf, PROTOCOL_VERSION, name);
        Ok(s)
    }

    /// The private name the daemon gave us (empty before the welcome).
    pub fn private_name(&self) -> &str {
        &self.private_name
    }

    /// The daemon's name (empty before the welcome).
    pub fn daemon_name(&self) -> &str {
        &self.daemon
    }

    /// Largest payload the daemon accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Why the stream is over, once it is.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Marks the stream over (end of file) unless a goodbye already said why.
    pub fn mark_eof(&mut self) {
        if self.closed.is_none() {
            self.closed = Some("connection closed by the daemon".to_owned());
        }
    }

    /// The error to return once the stream is over.
    pub fn closed_error(&self) -> Error {
        Error::Closed {
            reason: self
                .closed
                .clone()
                .unwrap_or_else(|| "connection closed".to_owned()),
        }
    }

    // ---- input side ----

    /// Free space at the end of the read buffer for the next read; always non-empty.
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
            // A large frame grew the buffer; give the memory back once it is consumed.
            if self.rbuf.len() > 4 * READ_CHUNK {
                self.rbuf.truncate(2 * READ_CHUNK);
                self.rbuf.shrink_to_fit();
            }
        } else if self.rpos > 0 && self.rbuf.len() - self.rend < READ_CHUNK {
            // Only the tail of a partial frame moves, so this copy stays small.
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        if self.rbuf.len() - self.rend < READ_CHUNK / 4 {
            let grown = self.rend + READ_CHUNK;
            self.rbuf.resize(grown, 0);
        }
        &mut self.rbuf[self.rend..]
    }

    /// Records that a read put `n` bytes into [`Session::read_space`].
    pub fn filled(&mut self, n: usize) {
        assert!(self.rend + n <= self.rbuf.len(), "read past the buffer");
        self.rend += n;
    }

    /// Bytes read but not yet parsed into frames.
    pub fn buffered_input(&self) -> usize {
        self.rend - self.rpos
    }

    /// True when a whole frame (or a put-aside one) is ready to hand out without reading.
    pub fn has_frame(&self) -> bool {
        !self.pending.is_empty()
            || matches!(
                split_frame(&self.rbuf[self.rpos..self.rend], self.max_frame),
                Ok(Some(_)) | Err(_)
            )
    }

    /// Splits the next whole frame body off the read buffer, as a byte range.
    fn split_next(&mut self) -> Result<Option<(usize, usize)>> {
        match split_frame(&self.rbuf[self.rpos..self.rend], self.max_frame) {
            Ok(None) => Ok(None),
            Ok(Some((body, used))) => {
                let start = self.rpos + client::LEN_PREFIX;
                let end = start + body.len();
                self.rpos += used;
                Ok(Some((start, end)))
            }
            Err(e) => {
                // A bad length prefix leaves no way to find the next frame.
                self.rpos = self.rend;
                self.closed = Some(format!("stream from daemon is corrupt: {e}"));
                Err(Error::Protocol(e))
            }
        }
    }

    /// Consumes the welcome (or refusal) that answers our hello.
    ///
    /// Returns `Ok(false)` while it has not fully arrived.
    pub fn handle_welcome(&mut self) -> Result<bool> {
        if self.welcomed {
            return Ok(true);
        }
        let Some((a, b)) = self.split_next()? else {
            return Ok(false);
        };
        match decode_daemon(&self.rbuf[a..b])? {
            DaemonFrame::Welcome {
                private_name,
                daemon,
                max_payload,
                ..
            } => {
                self.private_name = private_name.to_owned();
                self.daemon = daemon.to_owned();
                self.max_payload = max_payload as usize;
                self.max_frame = client::max_frame_len(self.max_payload.max(MAX_STATUS_JSON));
                self.welcomed = true;
                Ok(true)
            }
            DaemonFrame::Refused { code, reason } => {
                self.closed = Some(format!("refused: {reason}"));
                Err(Error::Refused {
                    code,
                    reason: reason.to_owned(),
                })
            }
            DaemonFrame::Goodbye { reason } => {
                self.closed = Some(reason.to_owned());
                Err(self.closed_error())
            }
            _ => Err(Error::Unexpected(
                "a frame other than welcome answered the hello",
            )),
        }
    }

    /// The next event, from put-aside frames first, then the read buffer.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        if let Some(body) = self.pending.pop_front() {
            let frame = decode_daemon(&body)?;
            let event = Event::from_frame(&frame)?;
            self.observe(&event);
            return Ok(Some(event));
        }
        let Some((a, b)) = self.split_next()? else {
            return Ok(None);
        };
        let frame = decode_daemon(&self.rbuf[a..b])?;
        let event = Event::from_frame(&frame)?;
        self.observe(&event);
        if let Event::Goodbye { reason } = &event {
            self.closed = Some(reason.clone());
        }
        Ok(Some(event))
    }

    /// Hands every whole frame already read to `f`, borrowed (the zero-copy path).
    ///
    /// Returns how many frames it handed out. A frame that does not decode stops the
    /// walk with its error; the frames before it were handed out.
    pub fn drain_frames(&mut self, mut f: impl FnMut(&DaemonFrame<'_>)) -> Result<usize> {
        let mut count = 0;
        while let Some(body) = self.pending.pop_front() {
            let frame = decode_daemon(&body)?;
            self.observe_frame(&frame);
            f(&frame);
            count += 1;
        }
        while let Some((a, b)) = self.split_next()? {
            // The flush bookkeeping needs `self` while the frame borrows the read buffer:
            // the rare frames it cares about are decoded twice rather than copied.
            if matches!(
                decode_daemon(&self.rbuf[a..b])?,
                DaemonFrame::FlushRequest { .. } | DaemonFrame::Membership { .. }
            ) {
                let body = self.rbuf[a..b].to_vec();
                let frame = decode_daemon(&body)?;
                self.observe_frame(&frame);
            }
            let frame = decode_daemon(&self.rbuf[a..b])?;
            if let DaemonFrame::Goodbye { reason } = frame {
                self.closed = Some(reason.to_owned());
            }
            f(&frame);
            count += 1;
        }
        Ok(count)
    }

    /// Keeps the flush state in step with an event handed to the application.
    fn observe(&mut self, event: &Event) {
        match event {
            Event::FlushRequest { group, view_id, .. } => self.flush_request(group, *view_id),
            Event::Membership { group, .. } => self.new_view(group),
            _ => {}
        }
    }

    /// As [`Session::observe`], for a borrowed frame.
    fn observe_frame(&mut self, frame: &DaemonFrame<'_>) {
        match *frame {
            DaemonFrame::FlushRequest { group, view_id, .. } => self.flush_request(group, view_id),
            DaemonFrame::Membership { group, .. } => self.new_view(group),
            _ => {}
        }
    }

    fn flush_request(&mut self, group: &str, view_id: ViewId) {
        // A repeated request (a flush started again after a configuration change) is
        // answered again, even after an earlier FlushOk.
        self.flushed.remove(group);
        self.flush_requested.insert(group.to_owned(), view_id);
        if self.auto_flush_ok {
            // Everything queued for the group so far is ahead of this in the output.
            let _ = self.flush_ok(group);
            self.auto_answered = true;
        }
    }

    /// A view of `group` ends its flush: sends to it are allowed again.
    fn new_view(&mut self, group: &str) {
        self.flushed.remove(group);
        self.flush_requested.remove(group);
    }

    /// Answer FlushRequests automatically (`true`) or leave them to the application's
    /// [`Session::flush_ok`] (`false`, the default).
    pub fn set_auto_flush_ok(&mut self, on: bool) {
        self.auto_flush_ok = on;
    }

    /// Whether FlushRequests are answered automatically.
    pub fn auto_flush_ok(&self) -> bool {
        self.auto_flush_ok
    }

    /// True once after a FlushOk was queued automatically: the front end writes it out.
    pub fn take_auto_answered(&mut self) -> bool {
        std::mem::take(&mut self.auto_answered)
    }

    /// Queues the FlushOk answering the pending FlushRequest of `group`, after whatever
    /// is queued already (so those sends are in the old view). Until the group's next view
    /// arrives, multicasts naming it fail with [`Error::Flushing`].
    pub fn flush_ok(&mut self, group: &str) -> Result<()> {
        let Some(view_id) = self.flush_requested.remove(group) else {
            return Err(Error::NoFlushRequest {
                group: group.to_owned(),
            });
        };
        encode::flush_ok(&mut self.wbuf, group, view_id);
        self.flushed.insert(group.to_owned());
        Ok(())
    }

    /// Groups whose FlushRequest is waiting for the application's answer.
    pub fn flush_requests(&self) -> impl Iterator<Item = &str> {
        self.flush_requested.keys().map(String::as_str)
    }

    /// Looks for a status answer in what was read, putting other frames aside in order.
    pub fn take_status(&mut self) -> Result<Option<String>> {
        while let Some((a, b)) = self.split_next()? {
            let frame = decode_daemon(&self.rbuf[a..b])?;
            match frame {
                DaemonFrame::Status { json } => return Ok(Some(json.to_owned())),
                DaemonFrame::Goodbye { reason } => self.closed = Some(reason.to_owned()),
                _ => {}
            }
            let body = self.rbuf[a..b].to_vec();
            self.pending.push_back(body);
        }
        Ok(None)
    }

    // ---- output side ----

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.wbuf[self.wpos..]
    }

    /// Records that the first `n` bytes of [`Session::output`] were written.
    pub fn consumed_output(&mut self, n: usize) {
        self.wpos += n;
        assert!(self.wpos <= self.wbuf.len(), "wrote past the output");
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
    }

    /// True when enough output is buffered that a batching caller should flush.
    pub fn should_flush(&self) -> bool {
        self.wbuf.len() - self.wpos >= WRITE_BATCH
    }

    /// The id of the request queued last; an [`crate::Event::Error`] naming it answers it.
    pub fn last_request(&self) -> u32 {
        self.last_request
    }

    /// The id for the next request (never 0, which means "no request").
    fn next_request(&mut self) -> u32 {
        self.last_request = self.last_request.checked_add(1).unwrap_or(1);
        self.last_request
    }

    /// Queues a join.
    pub fn join(&mut self, group: &str) -> Result<()> {
        check_group(group)?;
        let request = self.next_request();
        encode::join(&mut self.wbuf, request, group);
        Ok(())
    }

    /// Queues a leave.
    pub fn leave(&mut self, group: &str) -> Result<()> {
        check_group(group)?;
        let request = self.next_request();
        encode::leave(&mut self.wbuf, request, group);
        Ok(())
    }

    /// Queues a multicast to groups and/or private names, after checking it.
    pub fn multicast<S: AsRef<str>>(
        &mut self,
        service: Service,
        targets: &[S],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        if targets.is_empty() || targets.len() > MAX_TARGET_GROUPS {
            return Err(Error::BadTargetCount {
                count: targets.len(),
                max: MAX_TARGET_GROUPS,
            });
        }
        for t in targets {
            check_target(t.as_ref())?;
            if self.flushed.contains(t.as_ref()) {
                return Err(Error::Flushing {
                    group: t.as_ref().to_owned(),
                });
            }
        }
        if payload.len() > self.max_payload {
            return Err(Error::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let request = self.next_request();
        encode::multicast(
            &mut self.wbuf,
            request,
            service,
            msg_type,
            targets.iter().map(AsRef::as_ref),
            payload,
        );
        Ok(())
    }

    /// Queues a status request.
    pub fn status_request(&mut self) {
        let request = self.next_request();
        encode::status_request(&mut self.wbuf, request);
    }

    /// Queues an orderly disconnect.
    pub fn disconnect(&mut self) {
        encode::disconnect(&mut self.wbuf);
    }
}

fn check_group(group: &str) -> Result<()> {
    names::check_group(group).map_err(|source| Error::BadName {
        name: group.to_owned(),
        source,
    })
}

/// A target is a group name or a well-formed private name.
pub(crate) fn check_target(target: &str) -> Result<()> {
    if names::is_private_name(target) {
        return match names::split_private_name(target) {
            Some(_) => Ok(()),
            None => Err(Error::BadPrivateName(target.to_owned())),
        };
    }
    check_group(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_control::wire::client::{
        ClientFrame, ErrorCode, MembershipReason, RefuseCode, ViewId, ViewKind, WireError,
        decode_client, max_frame_len,
    };

    /// Feeds `bytes` into the session in reads of at most `step` bytes.
    fn feed(s: &mut Session, bytes: &[u8], step: usize) {
        for chunk in bytes.chunks(step) {
            let space = s.read_space();
            space[..chunk.len()].copy_from_slice(chunk);
            s.filled(chunk.len());
        }
    }

    fn welcomed() -> Session {
        let mut s = Session::new("alice").unwrap();
        let n = s.output().len();
        s.consumed_output(n);
        let mut w = Vec::new();
        encode::welcome(&mut w, "#alice#d1", "d1", 1000);
        feed(&mut s, &w, 3);
        assert!(s.handle_welcome().unwrap());
        s
    }

    fn client_frames(out: &[u8]) -> Vec<ClientFrame<'_>> {
        let mut rest = out;
        let mut v = Vec::new();
        while let Some((body, used)) = split_frame(rest, max_frame_len(1 << 20)).unwrap() {
            v.push(decode_client(body).unwrap());
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "a partial frame was left in the output");
        v
    }

    fn flush_request_bytes(seq: u64) -> Vec<u8> {
        let mut w = Vec::new();
        let view = ViewId { epoch: 1, seq };
        encode::flush_request(&mut w, "vs", view, MembershipReason::Join, ["#c#d1"]);
        w
    }

    #[test]
    fn flush_ok_answers_the_request_after_earlier_sends_then_sends_wait_for_the_view() {
        let mut s = welcomed();
        assert!(matches!(
            s.flush_ok("vs"),
            Err(Error::NoFlushRequest { .. })
        ));
        feed(&mut s, &flush_request_bytes(2), 5);
        let e = s.next_event().unwrap().unwrap();
        assert_eq!(
            e,
            Event::FlushRequest {
                group: "vs".into(),
                view_id: ViewId { epoch: 1, seq: 2 },
                reason: MembershipReason::Join,
                changed: vec!["#c#d1".into()],
            }
        );
        assert_eq!(s.flush_requests().collect::<Vec<_>>(), ["vs"]);
        assert!(
            !s.take_auto_answered(),
            "manual mode waits for the application"
        );
        s.multicast(Service::Agreed, &["vs"], 0, b"before").unwrap();
        s.flush_ok("vs").unwrap();
        assert!(matches!(
            s.multicast(Service::Agreed, &["vs", "other"], 0, b"x"),
            Err(Error::Flushing { group }) if group == "vs"
        ));
        s.multicast(Service::Agreed, &["other"], 0, b"elsewhere")
            .unwrap();
        assert!(matches!(
            s.flush_ok("vs"),
            Err(Error::NoFlushRequest { .. })
        ));
        let frames = client_frames(s.output());
        assert!(matches!(
            frames[0],
            ClientFrame::Multicast {
                payload: b"before",
                ..
            }
        ));
        assert_eq!(
            frames[1],
            ClientFrame::FlushOk {
                group: "vs",
                view_id: ViewId { epoch: 1, seq: 2 }
            }
        );
        assert_eq!(frames.len(), 3);
        // The new view ends the flush.
        let mut v = Vec::new();
        encode::membership(
            &mut v,
            "vs",
            ViewId { epoch: 1, seq: 3 },
            ViewKind::Regular,
            MembershipReason::Join,
            ["#c#d1"],
            ["#alice#d1", "#c#d1"],
        );
        feed(&mut s, &v, 7);
        assert!(matches!(s.next_event(), Ok(Some(Event::Membership { .. }))));
        s.multicast(Service::Agreed, &["vs"], 0, b"after").unwrap();
    }

    #[test]
    fn automatic_flush_ok_follows_the_queued_sends_on_both_read_paths() {
        let mut s = welcomed();
        s.set_auto_flush_ok(true);
        assert!(s.auto_flush_ok());
        s.multicast(Service::Safe, &["vs"], 0, b"queued").unwrap();
        feed(&mut s, &flush_request_bytes(2), 64);
        assert!(matches!(
            s.next_event(),
            Ok(Some(Event::FlushRequest { .. }))
        ));
        assert!(s.take_auto_answered());
        assert!(!s.take_auto_answered(), "told once");
        let frames = client_frames(s.output());
        assert!(matches!(
            frames[0],
            ClientFrame::Multicast {
                payload: b"queued",
                ..
            }
        ));
        assert!(matches!(
            frames[1],
            ClientFrame::FlushOk { group: "vs", .. }
        ));
        assert!(s.multicast(Service::Safe, &["vs"], 0, b"x").is_err());
        // The zero-copy path answers too; a repeated request is answered again.
        let n = s.output().len();
        s.consumed_output(n);
        feed(&mut s, &flush_request_bytes(2), 64);
        let mut kinds = 0;
        s.drain_frames(|f| {
            assert!(matches!(f, DaemonFrame::FlushRequest { .. }));
            kinds += 1;
        })
        .unwrap();
        assert_eq!(kinds, 1);
        assert!(s.take_auto_answered());
        assert!(matches!(
            client_frames(s.output())[..],
            [ClientFrame::FlushOk { group: "vs", .. }]
        ));
    }

    #[test]
    fn hello_then_welcome_sets_names_and_limit() {
        let s = Session::new("alice").unwrap();
        assert_eq!(
            client_frames(s.output()),
            [ClientFrame::Hello {
                version: PROTOCOL_VERSION,
                name: "alice"
            }]
        );
        let s = welcomed();
        assert_eq!(s.private_name(), "#alice#d1");
        assert_eq!(s.daemon_name(), "d1");
        assert_eq!(s.max_payload(), 1000);
    }

    #[test]
    fn refusal_is_a_typed_error() {
        let mut s = Session::new("").unwrap();
        let mut w = Vec::new();
        encode::refused(&mut w, RefuseCode::DuplicateName, "name taken");
        feed(&mut s, &w, 1);
        match s.handle_welcome() {
            Err(Error::Refused { code, reason }) => {
                assert_eq!(code, RefuseCode::DuplicateName);
                assert_eq!(reason, "name taken");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_names_are_caught_before_sending() {
        assert!(matches!(
            Session::new("has space"),
            Err(Error::BadName { .. })
        ));
        let mut s = welcomed();
        assert!(matches!(s.join(""), Err(Error::BadName { .. })));
        assert!(matches!(
            s.join(&"g".repeat(33)),
            Err(Error::BadName { .. })
        ));
        assert!(matches!(s.leave("a\u{7}"), Err(Error::BadName { .. })));
        assert!(matches!(
            s.multicast(Service::Agreed, &["#nodaemon"], 0, b""),
            Err(Error::BadPrivateName(_))
        ));
        let none: [&str; 0] = [];
        assert!(matches!(
            s.multicast(Service::Agreed, &none, 0, b""),
            Err(Error::BadTargetCount { count: 0, .. })
        ));
        assert!(matches!(
            s.multicast(Service::Agreed, &["g"], 0, &[0; 1001]),
            Err(Error::TooLarge {
                len: 1001,
                max: 1000
            })
        ));
        assert!(
            s.output().is_empty(),
            "rejected requests must not reach the wire"
        );
    }

    #[test]
    fn requests_encode_in_order() {
        let mut s = welcomed();
        s.join("g1").unwrap();
        s.multicast(Service::Fifo, &["g1", "#bob#d1"], 9, b"hi")
            .unwrap();
        s.leave("g1").unwrap();
        s.status_request();
        s.disconnect();
        let frames = client_frames(s.output());
        assert_eq!(frames.len(), 5);
        assert_eq!(
            frames[0],
            ClientFrame::Join {
                request: 1,
                group: "g1"
            }
        );
        match &frames[1] {
            ClientFrame::Multicast {
                request: 2,
                service,
                msg_type,
                groups,
                payload,
            } => {
                assert_eq!(*service, Service::Fifo);
                assert_eq!(*msg_type, 9);
                assert_eq!(groups.iter().collect::<Vec<_>>(), ["g1", "#bob#d1"]);
                assert_eq!(*payload, b"hi");
            }
            other => panic!("not a multicast: {other:?}"),
        }
        assert_eq!(
            frames[2],
            ClientFrame::Leave {
                request: 3,
                group: "g1"
            }
        );
        assert_eq!(frames[3], ClientFrame::StatusRequest { request: 4 });
        assert_eq!(frames[4], ClientFrame::Disconnect);
        let half = s.output().len() / 2;
        s.consumed_output(half);
        let rest = s.output().len();
        s.consumed_output(rest);
        assert!(s.output().is_empty());
    }

    fn daemon_stream() -> Vec<u8> {
        let mut w = Vec::new();
        encode::membership(
            &mut w,
            "g",
            ViewId { epoch: 1, seq: 2 },
            ViewKind::Regular,
            MembershipReason::Join,
            ["#alice#d1"],
            ["#alice#d1", "#bob#d1"],
        );
        for i in 0..200u16 {
            encode::data_to(
                &mut w,
                "#bob#d1",
                ["g"],
                Service::Agreed,
                i,
                &vec![i as u8; usize::from(i) * 7],
            );
        }
        encode::error(&mut w, 0, ErrorCode::NotJoined, "not in g2");
        encode::status(&mut w, "{\"clients\":[]}");
        encode::goodbye(&mut w, "bye");
        w
    }

    #[test]
    fn events_survive_any_read_split() {
        for step in [1, 5, 64, 4096, 1 << 20] {
            let mut s = welcomed();
            feed(&mut s, &daemon_stream(), step);
            let mut events = Vec::new();
            while let Some(e) = s.next_event().unwrap() {
                events.push(e);
            }
            assert_eq!(events.len(), 204, "step {step}");
            assert_eq!(
                events[0],
                Event::Membership {
                    group: "g".into(),
                    view_id: ViewId { epoch: 1, seq: 2 },
                    kind: ViewKind::Regular,
                    reason: MembershipReason::Join,
                    changed: vec!["#alice#d1".into()],
                    members: vec!["#alice#d1".into(), "#bob#d1".into()],
                }
            );
            for (i, e) in events[1..201].iter().enumerate() {
                let Event::Data {
                    msg_type, payload, ..
                } = e
                else {
                    panic!("expected data at {i}, got {e:?}");
                };
                assert_eq!(usize::from(*msg_type), i);
                assert_eq!(payload.len(), i * 7);
            }
            assert!(matches!(
                events[201],
                Event::Error {
                    code: ErrorCode::NotJoined,
                    ..
                }
            ));
            assert!(matches!(&events[203], Event::Goodbye { reason } if reason == "bye"));
            assert_eq!(s.closed_reason(), Some("bye"));
        }
    }

    #[test]
    fn status_puts_other_frames_aside_in_order() {
        let mut s = welcomed();
        feed(&mut s, &daemon_stream(), 1000);
        assert_eq!(
            s.take_status().unwrap().as_deref(),
            Some("{\"clients\":[]}")
        );
        let mut kinds = Vec::new();
        let n = s
            .drain_frames(|f| {
                kinds.push(match f {
                    DaemonFrame::Membership { .. } => 'm',
                    DaemonFrame::Data { .. } => 'd',
                    DaemonFrame::Error { .. } => 'e',
                    DaemonFrame::Goodbye { .. } => 'g',
                    _ => '?',
                })
            })
            .unwrap();
        assert_eq!(n, 203);
        assert_eq!(kinds[0], 'm');
        assert!(kinds[1..201].iter().all(|&k| k == 'd'));
        assert_eq!(&kinds[201..], ['e', 'g']);
    }

    #[test]
    fn oversize_length_poisons_the_stream() {
        let mut s = welcomed();
        feed(&mut s, &u32::MAX.to_le_bytes(), 4);
        assert!(matches!(
            s.next_event(),
            Err(Error::Protocol(WireError::FrameTooLong { .. }))
        ));
        assert!(s.closed_reason().unwrap().contains("corrupt"));
    }

    #[test]
    fn a_frame_larger_than_the_buffer_grows_it() {
        let mut s = Session::new("").unwrap();
        let mut w = Vec::new();
        encode::welcome(&mut w, "#a#d", "d", 4 << 20);
        feed(&mut s, &w, 64);
        assert!(s.handle_welcome().unwrap());
        let big = vec![7u8; 3 << 20];
        let mut w = Vec::new();
        encode::data_to(&mut w, "#a#d", ["g"], Service::Safe, 1, &big);
        feed(&mut s, &w, 100_000);
        match s.next_event().unwrap() {
            Some(Event::Data { payload, .. }) => assert_eq!(payload, big),
            other => panic!("expected the big message, got {other:?}"),
        }
        assert_eq!(s.buffered_input(), 0);
        assert!(
            s.read_space().len() <= 2 * READ_CHUNK,
            "the grown buffer is given back"
        );
    }
}
