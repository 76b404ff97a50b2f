//! Sending a judged call upstream and streaming the answer back, scrubbed of
//! the injected key, with the outcome audited when the stream ends.

use super::*;

/// Sends the checked request upstream and streams the scrubbed response back.
pub(super) async fn send(
    s: &S,
    mut up: axum::http::Request<Body>,
    body: Inbound,
    plan: Plan,
    result: EventBody,
    started: Instant,
) -> Response {
    let limit = s.config.proxy_max_body as u64;
    let in_bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&in_bytes);
    *up.body_mut() = match body {
        Inbound::Read(b) => {
            in_bytes.store(b.len() as u64, Ordering::Relaxed);
            Body::from(b)
        }
        Inbound::Streaming(b) => Body::new(http_body_util::Limited::new(
            counted(b, counter),
            limit as usize,
        )),
    };
    let outcome = tokio::time::timeout(plan.timeout, s.http.request(up)).await;
    let resp = match outcome {
        Err(_) => {
            let e = err(
                Code::GatewayTimeout,
                format!(
                    "the upstream did not answer within {} ms",
                    plan.timeout.as_millis()
                ),
            );
            return failed(s, result, started, &in_bytes, e).await;
        }
        Ok(Err(e)) => {
            let e = if in_bytes.load(Ordering::Relaxed) > limit {
                err(
                    Code::TooLarge,
                    format!("the request body is larger than {limit} bytes"),
                )
            } else if e.is_connect() {
                err(
                    Code::BadGateway,
                    "the proxy cannot connect to the upstream; tell the tool's admin (the upstream URL is in its registration)",
                )
            } else {
                err(
                    Code::BadGateway,
                    "the upstream closed the connection or sent an invalid response",
                )
            };
            return failed(s, result, started, &in_bytes, e).await;
        }
        Ok(Ok(r)) => r,
    };
    let (mut rp, rb) = resp.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    if let Some(enc) = compressed(&rp.headers) {
        let e = err(
            Code::BadGateway,
            format!(
                "the upstream answered with a `{enc}`-encoded body, which the proxy cannot check for the upstream key; the tool's admin must have the upstream answer uncompressed (the proxy asks with `Accept-Encoding: identity`)"
            ),
        );
        return failed(s, result, started, &in_bytes, e).await;
    }
    let mut scrubber = plan.scrubber;
    scrub_headers(&mut rp.headers, &mut scrubber);
    let reflected = Arc::new(AtomicBool::new(scrubber.reflected()));
    let out_bytes = Arc::new(AtomicU64::new(0));
    let mut result = result;
    result.decision = mandate_core::audit::Decision::Ok;
    let done = Outcome {
        s: Arc::clone(s),
        ev: Some(result),
        status: rp.status.as_u16(),
        started,
        headers_ms: started.elapsed().as_secs_f64() * 1e3,
        in_bytes,
        out_bytes: Arc::clone(&out_bytes),
        reflected: Arc::clone(&reflected),
    };
    let body = Scrubbed {
        inner: Body::new(rb),
        scrubber,
        flushed: false,
        trailers: None,
        outcome: done,
    };
    Response::from_parts(rp, Body::new(body))
}

/// The response's content coding, when it is not `identity`.
pub(super) fn compressed(h: &HeaderMap) -> Option<String> {
    h.get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .flat_map(|v| {
            v.split(',')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|c| !c.is_empty() && c != "identity")
        .map(|c| c.chars().take(32).collect())
}

/// Replaces the upstream key in header values (and drops a header whose
/// name holds it).
pub(super) fn scrub_headers(h: &mut HeaderMap, scrubber: &mut Scrubber) {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h.iter() {
        if scrubber.scrub(name.as_str().as_bytes()).is_some() {
            continue;
        }
        match scrubber.scrub(value.as_bytes()) {
            Some(clean) => {
                if let Ok(v) = HeaderValue::from_bytes(&clean) {
                    out.append(name.clone(), v);
                }
            }
            None => {
                out.append(name.clone(), value.clone());
            }
        }
    }
    *h = out;
}

/// The upstream's response body with the upstream key replaced, also where
/// it is split across chunks (the scrubber holds back a tail); records the
/// call's outcome when done or dropped.
pub(super) struct Scrubbed {
    inner: Body,
    scrubber: Scrubber,
    flushed: bool,
    trailers: Option<HeaderMap>,
    outcome: Outcome,
}

impl Scrubbed {
    fn data(&mut self, bytes: Vec<u8>) -> Frame<Bytes> {
        self.outcome
            .out_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if self.scrubber.reflected() {
            self.outcome.reflected.store(true, Ordering::Relaxed);
        }
        Frame::data(Bytes::from(bytes))
    }

    /// The end: what the scrubber held back, then the trailers.
    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if !self.flushed {
            self.flushed = true;
            let rest = self.scrubber.finish();
            if !rest.is_empty() {
                return Poll::Ready(Some(Ok(self.data(rest))));
            }
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

impl hyper::body::Body for Scrubbed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.flushed {
            return this.flush();
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return this.flush(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(d) => {
                    let out = this.scrubber.push(&d);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(this.data(out))));
                    }
                }
                Err(f) => {
                    if let Ok(mut t) = f.into_trailers() {
                        scrub_headers(&mut t, &mut this.scrubber);
                        this.trailers = Some(t);
                    }
                    return this.flush();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.flushed && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.inner.size_hint().exact() {
            // Markers are as long as what they replace.
            Some(n) if !self.flushed => SizeHint::with_exact(n + self.scrubber.held() as u64),
            _ => SizeHint::default(),
        }
    }
}

/// The request body, counting its bytes as they stream.
pub(super) fn counted(
    body: Body,
    counter: Arc<AtomicU64>,
) -> impl hyper::body::Body<Data = axum::body::Bytes, Error = axum::Error> + Send + 'static {
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            counter.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        f
    })
}

/// Records a call's outcome when its response body is done (or dropped).
pub(super) struct Outcome {
    s: S,
    ev: Option<EventBody>,
    status: u16,
    started: Instant,
    headers_ms: f64,
    in_bytes: Arc<AtomicU64>,
    out_bytes: Arc<AtomicU64>,
    /// The upstream sent the injected key back (it was scrubbed).
    reflected: Arc<AtomicBool>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let Some(mut ev) = self.ev.take() else { return };
        ev.time_ms = self.s.now_ms();
        merge(
            &mut ev.details,
            json!({
                "status": self.status,
                "request_bytes": self.in_bytes.load(Ordering::Relaxed),
                "response_bytes": self.out_bytes.load(Ordering::Relaxed),
                "latency_ms": round2(self.headers_ms),
                "duration_ms": round2(self.started.elapsed().as_secs_f64() * 1e3),
            }),
        );
        if self.reflected.load(Ordering::Relaxed) {
            merge(&mut ev.details, json!({"secret_reflected": true}));
            ev.reason = Some(
                "the upstream sent the injected key back; it was replaced before reaching the agent"
                    .into(),
            );
        }
        let s = Arc::clone(&self.s);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                if let Err(e) = s.record(vec![ev]).await {
                    tracing::error!("cannot record a proxy call's outcome: {}", e.description);
                }
            });
        }
    }
}

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(super) async fn failed(
    s: &S,
    mut ev: EventBody,
    started: Instant,
    in_bytes: &AtomicU64,
    e: ApiError,
) -> Response {
    ev.time_ms = s.now_ms();
    ev.decision = mandate_core::audit::Decision::Error;
    ev.reason = Some(format!("{}: {}", e.code.as_str(), e.description));
    merge(
        &mut ev.details,
        json!({
            "status": e.code.status().as_u16(),
            "request_bytes": in_bytes.load(Ordering::Relaxed),
            "duration_ms": round2(started.elapsed().as_secs_f64() * 1e3),
        }),
    );
    audited(s, ev, e).await
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those `Connection` names.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}
