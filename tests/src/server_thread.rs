//! A loopback server (the test API server, the counting CRI proxy) on a tokio runtime of its own in
//! a thread of its own, so that blocking tests can use it; stopped, and its thread joined, on drop.

use std::future::Future;

/// A server future running in its own thread; [`ServerThread::stop`] (or drop) signals it and
/// waits for the thread to end. Dropping the runtime closes every connection it still holds.
pub struct ServerThread {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(stop)` on a two-worker runtime in a new thread; the future should end when
    /// `stop` resolves. `serve` is called inside the runtime, so it may adopt std listeners.
    pub fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move { serve(rx).await });
        });
        Self {
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Signals the server and joins its thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}
