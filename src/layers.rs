//! `tower` layers (the `tower` cargo feature): a fleet-wide rate limit and a fleet-wide
//! circuit breaker in front of any `tower::Service`, keyed by a function of the request
//! (route, tenant…).
//!
//! Both refuse with a [`Refusal`] that carries the time after which a retry can succeed, as
//! the service's error (boxed, as tower's middleware expect): map it to a response with
//! axum's `HandleErrorLayer` (`429 Too Many Requests` or `503 Service Unavailable` with a
//! `Retry-After` header; `examples/axum_layers.rs` shows it).
//!
//! - [`RateLimitLayer`]: one permit per request from a [`RateLimiter`] policy; a denial is
//!   [`Refusal::Throttled`]. The limiter decides on the server clock for the whole fleet and
//!   falls back to a local share when Redis is unreachable, as documented for the limiter.
//! - [`BreakerLayer`]: the request goes through only if the [`Breaker`] admits it; the inner
//!   service's error, or a response the classifier calls a failure, is recorded as a failure,
//!   anything else as a success, except a [`Refusal`] of an inner layer (a rate limit below
//!   the breaker), which is recorded as neither. A refusal is [`Refusal::CircuitOpen`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use crate::breaker::Breaker;
use crate::error::Error;
use crate::ratelimit::RateLimiter;

/// Why a layer refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The rate limit has no permit now; one is expected after `retry_after`.
    #[error("rate limited; retry after {retry_after:?}")]
    Throttled {
        /// When a permit is expected.
        retry_after: Duration,
    },
    /// The breaker is open for this key; a trial call may be admitted after `retry_after`
    /// (zero when unknown).
    #[error("circuit open; retry after {retry_after:?}")]
    CircuitOpen {
        /// When a trial call may be admitted.
        retry_after: Duration,
    },
    /// The policy could not decide (invalid key, or the runtime is shutting down).
    #[error(transparent)]
    Policy(Error),
}

impl Refusal {
    /// The time after which a retry may succeed, for a `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Throttled { retry_after } | Refusal::CircuitOpen { retry_after } => {
                Some(*retry_after)
            }
            Refusal::Policy(e) => e.retry_after(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Applies a [`RateLimiter`] policy to every request, keyed by `key(&request)`.
pub struct RateLimitLayer<K> {
    limiter: RateLimiter,
    key: Arc<K>,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K> RateLimitLayer<K> {
    /// One permit of `limiter` per request, on the route `key(&request)` returns.
    pub fn new(limiter: RateLimiter, key: K) -> Self {
        RateLimitLayer {
            limiter,
            key: Arc::new(key),
        }
    }
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimited<S, K>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
pub struct RateLimited<S, K> {
    inner: S,
    limiter: RateLimiter,
    key: Arc<K>,
}

impl<S: Clone, K> Clone for RateLimited<S, K> {
    fn clone(&self) -> Self {
        RateLimited {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, Req> Service<Req> for RateLimited<S, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    K: Fn(&Req) -> String + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The clone that was made ready serves this request; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limiter, route) = (self.limiter.clone(), (self.key)(&req));
        Box::pin(async move {
            let d = limiter
                .try_acquire(&route, 1)
                .await
                .map_err(Refusal::Policy)?;
            if !d.allowed {
                return Err(Refusal::Throttled {
                    retry_after: d.retry_after,
                }
                .into());
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// Guards every request with a [`Breaker`] policy, keyed by `key(&request)`.
pub struct BreakerLayer<K, C> {
    breaker: Breaker,
    key: Arc<K>,
    is_failure: Arc<C>,
}

impl<K, C> Clone for BreakerLayer<K, C> {
    fn clone(&self) -> Self {
        BreakerLayer {
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            is_failure: self.is_failure.clone(),
        }
    }
}

impl<K> BreakerLayer<K, ()> {
    /// Admit each request through `breaker` on the route `key(&request)`; the inner
    /// service's errors count as failures, its responses as successes.
    pub fn new(breaker: Breaker, key: K) -> Self {
        BreakerLayer {
            breaker,
            key: Arc::new(key),
            is_failure: Arc::new(()),
        }
    }

    /// Count also the responses `is_failure` picks (a `5xx`, say) as failures.
    pub fn failure_if<C>(self, is_failure: C) -> BreakerLayer<K, C> {
        BreakerLayer {
            breaker: self.breaker,
            key: self.key,
            is_failure: Arc::new(is_failure),
        }
    }
}

impl<S, K, C> Layer<S> for BreakerLayer<K, C> {
    type Service = Guarded<S, K, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            is_failure: self.is_failure.clone(),
        }
    }
}

/// The service [`BreakerLayer`] makes.
pub struct Guarded<S, K, C> {
    inner: S,
    breaker: Breaker,
    key: Arc<K>,
    is_failure: Arc<C>,
}

impl<S: Clone, K, C> Clone for Guarded<S, K, C> {
    fn clone(&self) -> Self {
        Guarded {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            key: self.key.clone(),
            is_failure: self.is_failure.clone(),
        }
    }
}

/// Which responses count as failures for a [`BreakerLayer`].
pub trait ResponseClassifier<R>: Send + Sync + 'static {
    /// Whether `response` is a failure.
    fn is_failure(&self, response: &R) -> bool;
}

impl<R> ResponseClassifier<R> for () {
    fn is_failure(&self, _: &R) -> bool {
        false
    }
}

impl<R, F: Fn(&R) -> bool + Send + Sync + 'static> ResponseClassifier<R> for F {
    fn is_failure(&self, response: &R) -> bool {
        self(response)
    }
}

impl<S, K, C, Req> Service<Req> for Guarded<S, K, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    S::Response: Send,
    K: Fn(&Req) -> String + Send + Sync + 'static,
    C: ResponseClassifier<S::Response>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (breaker, route) = (self.breaker.clone(), (self.key)(&req));
        let is_failure = self.is_failure.clone();
        Box::pin(async move {
            let admission = breaker.admit(&route).await.map_err(Refusal::Policy)?;
            if !admission.allowed {
                return Err(Refusal::CircuitOpen {
                    retry_after: admission.retry_after,
                }
                .into());
            }
            let result = inner.call(req).await.map_err(Into::into);
            let ok = match &result {
                Ok(response) => Some(!is_failure.is_failure(response)),
                // A refusal of an inner layer (a rate limit) says nothing of the backend:
                // neither a success nor a failure.
                Err(e) if e.downcast_ref::<Refusal>().is_some() => None,
                Err(_) => Some(false),
            };
            if let Some(ok) = ok {
                // Recording never fails on Redis errors (the breaker falls back locally); a
                // refusal after shutdown began does not change the caller's answer.
                let _ = breaker.record(&route, ok).await;
            }
            result
        })
    }
}
