//! The HTTP side of the daemon: the listener (plain, or TLS with rustls), the tokio runtime serving
//! the API (axum-server), SIGHUP (the TLS certificate read again, and a reload of the bundle asked of
//! live.rs), the systemd notifications, and the decision to stop (a signal, or a model that failed to
//! load).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use clipcap_core::captioner::CaptionError;
use tokio::sync::oneshot;

use super::admission::{Admission, Admit, Limits};
use super::state::State;
use super::{http, notify};
use crate::shutdown::Shutdown;

/// Why the daemon stops, other than an HTTP server error.
pub enum Stop {
    Signal,
    /// The captioning thread could not load the models.
    LoadFailed(CaptionError),
    /// The captioning thread ended before saying whether the models loaded (it panicked).
    CaptioningGone,
}

/// The certificate and key files of an HTTPS listener.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    fn load(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        crate::tls::server_config(&self.cert, &self.key).map(Arc::new)
    }
}

/// The bound listening socket: bound before anything slow starts, so a port in use (or a bad
/// certificate) is an error at once.
pub struct Server {
    listener: std::net::TcpListener,
    listen: String,
    tls: Option<(Tls, Arc<rustls::ServerConfig>)>,
}

impl Server {
    pub fn bind(listen: &str, tls: Option<Tls>) -> anyhow::Result<Server> {
        let tls = tls
            .map(|t| t.load().map(|config| (t, config)))
            .transpose()
            .context("service.tls_cert and tls_key")?;
        let listener = std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        Ok(Server {
            listener,
            listen: listen.into(),
            tls,
        })
    }

    /// Serves the API until the daemon stops, then gives requests in progress `bound` to finish.
    /// `model` reports the captioning thread's model load: READY (and the watchdog) follow it. Each
    /// SIGHUP sends a reload request on `reload`.
    pub fn serve(
        self,
        api: http::Api,
        model: oneshot::Receiver<Result<(), CaptionError>>,
        reload: SyncSender<()>,
        shutdown: &Shutdown,
        bound: Duration,
    ) -> anyhow::Result<Stop> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let state = api.state.clone();
        let s = &api.service;
        let timeout = Duration::from_millis(s.header_timeout_ms);
        let admit = Admit {
            admission: Admission::new(Limits {
                max: s.max_connections,
                per_client: s.max_connections_per_client,
                local: s.local_connections,
            }),
            metrics: api.metrics.clone(),
        };
        // Counted from the start: a refusal is an error a dashboard should see at 0 before one comes.
        let _ = api.metrics.error_counter(super::metrics::ErrorKind::Connection);
        let result = rt.block_on(async {
            let app = http::router(api).into_make_service_with_connect_info::<SocketAddr>();
            let decided = {
                let (shutdown, listen) = (shutdown.clone(), self.listen.clone());
                tokio::spawn(async move {
                    let stop = tokio::select! {
                        () = signal() => Stop::Signal,
                        stop = started(model, state, &listen) => stop,
                    };
                    notify::stopping();
                    shutdown.trigger();
                    stop
                })
            };
            // Stopping: no new connections; open requests get `bound`, then are dropped.
            let handle = axum_server::Handle::new();
            tokio::spawn({
                let (shutdown, handle) = (shutdown.clone(), handle.clone());
                async move {
                    shutdown.wait().await;
                    handle.graceful_shutdown(Some(bound));
                }
            });
            let tls = self
                .tls
                .map(|(files, config)| (files, RustlsConfig::from_config(config)));
            tokio::spawn(on_sighup(
                tls.as_ref().map(|(files, config)| (files.clone(), config.clone())),
                reload,
            ));
            match tls {
                Some((_, config)) => {
                    tracing::info!("serving on https://{}", self.listen);
                    let acceptor = RustlsAcceptor::new(config).handshake_timeout(timeout).acceptor(admit);
                    let server = axum_server::from_tcp(self.listener)?.acceptor(acceptor);
                    http1(server, timeout).handle(handle).serve(app).await
                }
                None => {
                    tracing::info!("serving on http://{}", self.listen);
                    let server = axum_server::from_tcp(self.listener)?.acceptor(admit);
                    http1(server, timeout).handle(handle).serve(app).await
                }
            }
            .context("HTTP server")?;
            // The server stops only after `decided` triggered the shutdown, so it has finished.
            anyhow::Ok(decided.await.unwrap_or(Stop::CaptioningGone))
        });
        rt.shutdown_timeout(Duration::from_millis(200));
        result
    }
}

/// HTTP/1.1 only, with every wait on the client bounded by `timeout`: the first request (which also
/// covers the protocol detection), each request's headers, and an idle keep-alive connection. HTTP/2
/// would need bounds of its own, and the API gains nothing from it (tls.rs offers only http/1.1).
fn http1<Acc>(server: axum_server::Server<SocketAddr, Acc>, timeout: Duration) -> axum_server::Server<SocketAddr, Acc> {
    let mut server = server.http1_only().first_request_timeout(timeout);
    server.http_builder().http1().header_read_timeout(timeout);
    server
}

/// Waits for the model load; once it succeeded, tells systemd READY, keeps the watchdog fed and
/// never returns. Returns why not, if it failed.
async fn started(model: oneshot::Receiver<Result<(), CaptionError>>, state: Arc<State>, listen: &str) -> Stop {
    match model.await {
        Ok(Ok(())) => {
            notify::ready(&format!("serving on {listen}"));
            if let Some(period) = notify::watchdog_period() {
                watchdog(state, period).await;
            }
            std::future::pending().await
        }
        Ok(Err(e)) => Stop::LoadFailed(e),
        Err(_) => Stop::CaptioningGone,
    }
}

/// Pings systemd's watchdog at half its period while the captioning thread keeps looping; a hung
/// pipeline stops the pings and systemd restarts the service.
async fn watchdog(state: Arc<State>, period: Duration) -> ! {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        if state.pipeline_alive(period / 2) {
            notify::watchdog();
        } else {
            tracing::error!(
                "captioning thread has not looped for {:?}; withholding the watchdog ping",
                period / 2
            );
        }
    }
}

/// SIGHUP reads the certificate and key again (a renewed certificate; a bad pair is logged and the
/// one in use kept), and asks for a reload of the bundle (one waits at most while another runs).
async fn on_sighup(tls: Option<(Tls, RustlsConfig)>, reload: SyncSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: neither the bundle nor a TLS certificate will be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        if let Some((files, config)) = &tls {
            match files.load() {
                Ok(new) => {
                    config.reload_from_config(new);
                    tracing::info!("SIGHUP: reloaded the TLS certificate {}", files.cert.display());
                }
                Err(e) => tracing::error!("SIGHUP: {e:#}; keeping the certificate in use"),
            }
        }
        if let Err(TrySendError::Disconnected(())) = reload.try_send(()) {
            tracing::warn!("SIGHUP: the bundle is not reloaded (the reload thread has stopped)");
        }
    }
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
