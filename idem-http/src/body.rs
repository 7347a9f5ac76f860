//! The body of the layer's responses, and the relay that hands a final
//! response's body to the client while the layer reads it to store it.

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The body of the [`Idempotency`](crate::Idempotency) service's
    /// responses: a stored, replayed or problem response held in memory
    /// (with its trailers),
    /// the inner service's body passed through as it is (other methods,
    /// requests without an optional key, results that are not stored), or
    /// a final response relayed to the client while the layer reads it to
    /// store it (see [`IdempotencyLayer::response_limit`](crate::IdempotencyLayer::response_limit)).
    ///
    /// A relayed body that fails or panics ends with an error, so the
    /// server aborts the response instead of ending it as if it were
    /// complete.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Inner { #[pin] body: B },
        Relay { relay: Relay<B> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody::stored(bytes, None)
    }

    /// A body held in memory, then its trailers.
    pub(crate) fn stored(bytes: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!bytes.is_empty()).then_some(bytes),
                trailers,
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn relay(relay: Relay<B>) -> Self {
        ResponseBody {
            kind: Kind::Relay { relay },
        }
    }

    /// Lets a relayed body drive `pump` itself, when no task runs it (the
    /// layer outside a tokio runtime).
    pub(crate) fn drive(&mut self, pump: BoxFuture<'static, ()>) {
        if let Kind::Relay { relay } = &mut self.kind {
            relay.pump = Some(pump);
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Relay { relay } => relay.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Relay { relay } => relay.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Relay { relay } => relay.hint,
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Relay { .. } => "Relay",
        };
        f.debug_tuple("ResponseBody").field(&kind).finish()
    }
}

/// What follows the frames a [`Feed`] pushed.
pub(crate) enum End<B> {
    /// The body ended (and its record is final).
    Done,
    /// The body failed: the client's body ends with an error.
    Failed,
    /// The rest of the body, for the client to read itself.
    Rest(Pin<Box<B>>),
}

struct State<B> {
    frames: VecDeque<Frame<Bytes>>,
    end: Option<End<B>>,
    waker: Option<Waker>,
    client_gone: bool,
    /// The layer's side, waiting to hear that the client is gone.
    gone_waker: Option<Waker>,
}

type Shared<B> = Arc<Mutex<State<B>>>;

fn lock<B>(shared: &Shared<B>) -> MutexGuard<'_, State<B>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new relay (the client's side) and its feed (the layer's side).
/// `hint` is the inner body's size hint, passed on to the server.
pub(crate) fn relay<B>(hint: SizeHint) -> (Relay<B>, Feed<B>) {
    let shared = Arc::new(Mutex::new(State {
        frames: VecDeque::new(),
        end: None,
        waker: None,
        client_gone: false,
        gone_waker: None,
    }));
    let relay = Relay {
        shared: Arc::clone(&shared),
        pump: None,
        rest: None,
        hint,
        done: false,
    };
    (
        relay,
        Feed {
            shared,
            ended: false,
        },
    )
}

/// The client's side of a relayed body: the frames the layer has read,
/// then the end the layer set (done, failed, or the rest of the body).
pub(crate) struct Relay<B> {
    shared: Shared<B>,
    /// Outside a tokio runtime, the layer's reading of the body, driven
    /// from here.
    pump: Option<BoxFuture<'static, ()>>,
    rest: Option<Pin<Box<B>>>,
    hint: SizeHint,
    done: bool,
}

impl<B> Relay<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(mut rest) = self.rest.take() {
                let polled = self.poll_rest(rest.as_mut(), cx);
                if !self.done {
                    self.rest = Some(rest);
                }
                return polled;
            }
            if let Some(pump) = &mut self.pump {
                if pump.as_mut().poll(cx).is_ready() {
                    self.pump = None;
                }
            }
            let mut state = lock(&self.shared);
            if let Some(frame) = state.frames.pop_front() {
                drop(state);
                if let Some(data) = frame.data_ref() {
                    self.consumed(data.len());
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match state.end.take() {
                None => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Some(End::Done) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Some(End::Failed) => {
                    self.done = true;
                    return Poll::Ready(Some(Err("the response body failed".into())));
                }
                Some(End::Rest(rest)) => self.rest = Some(rest),
            }
        }
    }

    /// Reads the rest of the body; a panic in it ends the body with an
    /// error instead of unwinding into the server.
    fn poll_rest(
        &mut self,
        rest: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| rest.poll_frame(cx)));
        let frame = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(frame)) => frame,
            Err(_) => {
                tracing::error!("the response body panicked after its record was made final");
                self.done = true;
                return Poll::Ready(Some(Err("the response body panicked".into())));
            }
        };
        match frame {
            None => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.consumed(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn consumed(&mut self, len: usize) {
        let len = len as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(self.hint.lower().saturating_sub(len));
        if let Some(upper) = self.hint.upper() {
            hint.set_upper(upper.saturating_sub(len));
        }
        self.hint = hint;
    }
}

impl<B> Drop for Relay<B> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.client_gone = true;
        state.frames.clear();
        let gone_waker = state.gone_waker.take();
        drop(state);
        if let Some(waker) = gone_waker {
            waker.wake();
        }
    }
}

/// The layer's side of a relayed body. Dropped without an end (a panic
/// or a cancelled task), it ends the client's body with an error, so the
/// client is never left waiting.
pub(crate) struct Feed<B> {
    shared: Shared<B>,
    ended: bool,
}

impl<B> Feed<B> {
    /// Queues a frame for the client, unless the client is gone.
    pub(crate) fn push(&self, frame: Frame<Bytes>) {
        let mut state = lock(&self.shared);
        if state.client_gone {
            return;
        }
        state.frames.push_back(frame);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the client dropped its body (it hung up).
    pub(crate) fn client_gone(&self) -> bool {
        lock(&self.shared).client_gone
    }

    /// Resolves when the client drops its body (it hung up).
    pub(crate) async fn gone(&self) {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if state.client_gone {
                Poll::Ready(())
            } else {
                state.gone_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// Sets what follows the queued frames.
    pub(crate) fn end(mut self, end: End<B>) {
        self.set_end(end);
    }

    fn set_end(&mut self, end: End<B>) {
        self.ended = true;
        let mut state = lock(&self.shared);
        if state.client_gone {
            return;
        }
        state.end = Some(end);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<B> Drop for Feed<B> {
    fn drop(&mut self) {
        if !self.ended {
            self.set_end(End::Failed);
        }
    }
}
