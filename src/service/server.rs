//! The HTTP side of the daemon: the listener, the tokio runtime serving the API, the systemd
//! notifications, and the decision to stop (a signal, or a model that failed to load).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clipcap_core::captioner::CaptionError;
use tokio::sync::oneshot;

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

/// The bound listening socket: bound before anything slow starts, so a port in use is an error at once.
pub struct Server {
    listener: std::net::TcpListener,
    listen: String,
}

impl Server {
    pub fn bind(listen: &str) -> anyhow::Result<Server> {
        let listener = std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            listen: listen.into(),
        })
    }

    /// Serves the API until the daemon stops, then gives requests in progress `bound` to finish.
    /// `model` reports the captioning thread's model load: READY (and the watchdog) follow it.
    pub fn serve(
        self,
        api: http::Api,
        model: oneshot::Receiver<Result<(), CaptionError>>,
        shutdown: &Shutdown,
        bound: Duration,
    ) -> anyhow::Result<Stop> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let state = api.state.clone();
        let result = rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            tracing::info!("serving on http://{}", self.listen);
            let app = http::router(api).into_make_service_with_connect_info::<std::net::SocketAddr>();
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
            let server = axum::serve(listener, app)
                .with_graceful_shutdown({
                    let shutdown = shutdown.clone();
                    async move { shutdown.wait().await }
                })
                .into_future();
            tokio::select! {
                served = server => served.context("HTTP server")?,
                () = async {
                    shutdown.wait().await;
                    tokio::time::sleep(bound).await;
                } => tracing::warn!("HTTP requests still open {} ms after the stop signal; dropping them", bound.as_millis()),
            }
            // The server stops only after `decided` triggered the shutdown, so it has finished.
            anyhow::Ok(decided.await.unwrap_or(Stop::CaptioningGone))
        });
        rt.shutdown_timeout(Duration::from_millis(200));
        result
    }
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

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
