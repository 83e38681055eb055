//! The supervisor: runs a long-lived node task, and when it ends before shutdown (returned or
//! panicked) counts it, reports it down, and starts it again after a jittered backoff that
//! resets only when the previous run had lasted a healthy period.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::shutdown::Shutdown;

/// The supervisor's backoff: 100 ms doubling to 5 s, reset after a run of 30 s.
fn backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
}

/// Runs `start(shutdown)` as a task until `shutdown`, restarting it whenever it ends early.
/// `down` is called once per early end (count it, clear readiness), before the restart.
pub async fn supervise<F, Fut>(
    task: &'static str,
    shutdown: Shutdown,
    down: impl Fn(),
    mut start: F,
) where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = backoff();
    loop {
        let began = Instant::now();
        let ended = tokio::spawn(start(shutdown.clone())).await;
        if shutdown.requested() {
            return;
        }
        match ended {
            Ok(()) => tracing::error!(task, "node task ended on its own; restarting"),
            Err(e) => tracing::error!(task, error = %e, "node task failed; restarting"),
        }
        down();
        let delay = backoff.after_failure(began.elapsed());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return,
        }
    }
}
