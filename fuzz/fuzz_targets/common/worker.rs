//! The tiny HTTP/1.1 worker behind the fuzz targets `request`, `h2` and `tls`: its answer
//! depends on the request path, so that the fuzzer reaches the proxy's paths beyond a plain
//! 200. `/echo…` streams the request body back, `/stream…` answers with a chunked body,
//! `/status/NNN` answers with that status, `/drop…` closes the connection without an answer
//! (the proxy retries, then answers 502), a request with `Upgrade` gets `101` and an echo
//! tunnel; anything else `200 ok`.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serve every connection `l` accepts.
pub async fn serve(l: TcpListener) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service_fn(worker))
                .with_upgrades()
                .await;
        });
    }
}

type WorkerBody = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, text: &'static str) -> Response<WorkerBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn worker(mut req: Request<Incoming>) -> Result<Response<WorkerBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if let Some(proto) = req.headers().get(header::UPGRADE).cloned() {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(u));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "");
        r.headers_mut().insert(header::UPGRADE, proto);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(r);
    }
    if path.starts_with("/drop") {
        return Err(std::io::Error::other("the worker drops this connection"));
    }
    if path.starts_with("/echo") {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path.starts_with("/stream") {
        let frames = ["one\n", "two\n", "three\n"]
            .map(|s| Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(s.as_bytes()))));
        return Ok(Response::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed(),
        ));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|s| !s.is_informational())
            .unwrap_or(StatusCode::OK);
        return Ok(full(status, "status\n"));
    }
    Ok(full(StatusCode::OK, "ok\n"))
}
