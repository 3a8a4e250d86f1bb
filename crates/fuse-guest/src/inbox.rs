//! The host's side of a connection after its request: [`Input`] lines read by a thread of
//! their own, so an operation can write output while input arrives, and notice a hang-up
//! (the host closed the connection or ended its channel) without reading itself.
//! Acknowledgements are consumed here; [`Outbox`] waits on them to keep at most a window of
//! data lines in flight.

use crate::proto::{Input, Response};
use std::io::{BufRead, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Input lines queued ahead of the operation that reads them.
const QUEUE: usize = 64;

#[derive(Default)]
struct FlowState {
    acked: u64,
    hung_up: bool,
}

#[derive(Default)]
struct Flow {
    state: Mutex<FlowState>,
    changed: Condvar,
}

impl Flow {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The input of one request.
pub struct Inbox {
    rx: Mutex<Receiver<Input>>,
    flow: Arc<Flow>,
}

impl Inbox {
    /// Starts reading `reader` (positioned after the request line) on its own thread.
    pub fn start<R: BufRead + Send + 'static>(mut reader: R) -> Inbox {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let flow = Arc::new(Flow::default());
        let f = flow.clone();
        std::thread::spawn(move || read_lines(&mut reader, &tx, &f));
        Inbox {
            rx: Mutex::new(rx),
            flow,
        }
    }

    /// An input that never sends anything and never hangs up (tests).
    pub fn none() -> Inbox {
        let (tx, rx) = mpsc::sync_channel(1);
        // Kept alive for the life of the process: `recv` blocks rather than ending.
        std::mem::forget(tx);
        Inbox {
            rx: Mutex::new(rx),
            flow: Arc::default(),
        }
    }

    /// The next input line; `None` once the host hung up or ended its input.
    pub fn recv(&self) -> Option<Input> {
        self.rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv()
            .ok()
    }

    /// The next input line within `limit`: `Err(())` when none came in time.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, limit: Duration) -> Result<Option<Input>, ()> {
        match self
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(limit)
        {
            Ok(i) => Ok(Some(i)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(()),
        }
    }

    /// Whether the host went away.
    pub fn hung_up(&self) -> bool {
        self.flow.lock().hung_up
    }

    /// Waits until fewer than `window` data lines after the `sent`th are unacknowledged;
    /// `false` when the host hung up instead.
    fn wait_window(&self, sent: u64, window: u32) -> bool {
        let s = self.flow.lock();
        let s = self
            .flow
            .changed
            .wait_while(s, |s| {
                !s.hung_up && sent.saturating_sub(s.acked) >= u64::from(window)
            })
            .unwrap_or_else(|p| p.into_inner());
        !s.hung_up
    }
}

fn read_lines<R: BufRead>(reader: &mut R, tx: &SyncSender<Input>, flow: &Flow) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(input) = serde_json::from_str::<Input>(line.trim_end()) else {
            // Not an input line: the host speaks something else; treat as a hang-up.
            break;
        };
        if let Some(n) = input.ack {
            let mut s = flow.lock();
            s.acked = s.acked.max(n);
            flow.changed.notify_all();
            if input.data_b64.is_none() && !input.eof && input.resize.is_none() {
                continue;
            }
        }
        if tx.send(input).is_err() {
            // The operation is over; keep reading acks until the host closes.
            continue;
        }
    }
    flow.lock().hung_up = true;
    flow.changed.notify_all();
}

/// The output of one request: writes lines, and keeps data lines within the window the
/// request asked for.
pub struct Outbox<'a, W: Write> {
    out: &'a mut W,
    inbox: &'a Inbox,
    window: Option<u32>,
    sent: u64,
    broken: bool,
}

impl<'a, W: Write> Outbox<'a, W> {
    /// Output for a request with flow-control `window` (none: unbounded).
    pub fn new(out: &'a mut W, inbox: &'a Inbox, window: Option<u32>) -> Self {
        Outbox {
            out,
            inbox,
            window: window.filter(|w| *w > 0),
            sent: 0,
            broken: false,
        }
    }

    /// Sends a line; a data line first waits for room in the window. `false` when the host
    /// is gone (hung up, or the write failed): the caller stops.
    pub fn send(&mut self, r: &Response) -> bool {
        if self.broken {
            return false;
        }
        if r.is_data() {
            if let Some(w) = self.window {
                if !self.inbox.wait_window(self.sent, w) {
                    self.broken = true;
                    return false;
                }
            }
            self.sent += 1;
        }
        if crate::write_line(self.out, r).is_err() {
            self.broken = true;
        }
        !self.broken
    }

    /// The input of the same request.
    pub fn inbox(&self) -> &'a Inbox {
        self.inbox
    }
}
