//! Loading with progress and cancellation, and loading on a worker thread
//! ([`ModelBuilder::build_async`]) for applications with a UI thread that must not freeze.
//!
//! ```no_run
//! use gemma_wgpu::{CancelToken, ModelBuilder};
//! let cancel = CancelToken::new();
//! let mut loading = ModelBuilder::new("gemma-4-E2B-it-qat-4bit")
//!     .with_cancel(cancel.clone())
//!     .with_progress(|p| eprintln!("{:?} {:.0}%", p.stage, 100.0 * p.fraction()))
//!     .build_async();
//! // In a UI frame loop: draw `loading.progress()`, take the model once it is there.
//! loop {
//!     if let Some(model) = loading.try_take() {
//!         let model = model?;
//!         break;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(16));
//! }
//! # Ok::<(), gemma_wgpu::Error>(())
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::generate::CancelToken;
use crate::generate::channel::{self, Flow, Receiver, channel};
use crate::model::{Model, ModelBuilder};
use crate::checkpoint::UploadProgress;

/// What loading is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadStage {
    /// Not started yet.
    #[default]
    Pending,
    /// Resolving the registry name or repository id (and downloading a missing checkpoint,
    /// which reports its own progress bar with the `hub` feature).
    Locating,
    /// Reading the config and opening the checkpoint files.
    Opening,
    /// Uploading weights: `bytes_done` / `tensors_done` advance after every tensor.
    Uploading,
    /// Building the decoder and vision encoder, loading the tokenizer and chat template.
    Preparing,
    /// Loaded.
    Done,
}

/// A progress event of loading (see [`ModelBuilder::with_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadProgress {
    /// What loading is doing.
    pub stage: LoadStage,
    /// Checkpoint bytes uploaded so far.
    pub bytes_done: u64,
    /// Checkpoint bytes to upload in all (0 before [`LoadStage::Uploading`]).
    pub bytes_total: u64,
    /// Tensors uploaded so far.
    pub tensors_done: usize,
    /// Tensors to upload in all (0 before [`LoadStage::Uploading`]).
    pub tensors_total: usize,
}

impl LoadProgress {
    pub(crate) fn stage(stage: LoadStage, u: &UploadProgress) -> Self {
        LoadProgress {
            stage,
            bytes_done: u.bytes_done,
            bytes_total: u.bytes_total,
            tensors_done: u.tensors_done,
            tensors_total: u.tensors_total,
        }
    }

    /// Fraction of the bytes uploaded, in `[0, 1]` (1 once [`LoadStage::Done`]).
    pub fn fraction(&self) -> f32 {
        match self.stage {
            LoadStage::Done => 1.0,
            _ if self.bytes_total == 0 => 0.0,
            _ => (self.bytes_done as f64 / self.bytes_total as f64).clamp(0.0, 1.0) as f32,
        }
    }
}

/// A progress callback (called on the loading thread).
pub(crate) type ProgressFn = Arc<dyn Fn(&LoadProgress) + Send + Sync>;

/// Progress and cancellation hooks of one load.
#[derive(Clone, Default)]
pub(crate) struct LoadHooks {
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) cancel: Option<CancelToken>,
}

impl std::fmt::Debug for LoadHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadHooks")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

impl LoadHooks {
    pub(crate) fn emit(&self, p: LoadProgress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }

    /// True (and the request cleared) when cancellation was requested.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.take())
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A model loading on a worker thread (from [`ModelBuilder::build_async`]).
///
/// Poll it from a UI frame loop ([`try_take`](Self::try_take), [`progress`](Self::progress)),
/// block on it ([`wait`](Self::wait)) or `.await` it (it is a [`Future`] that any executor can
/// drive: the worker wakes the task, nothing blocks the executor thread). Dropping the handle
/// before the model is taken cancels the load.
pub struct LoadHandle {
    /// The result (the crate's one channel type).
    result: Receiver<Result<Model>>,
    progress: Arc<Mutex<LoadProgress>>,
    taken: bool,
    cancel: CancelToken,
}

impl std::fmt::Debug for LoadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadHandle")
            .field("progress", &self.progress())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl LoadHandle {
    pub(crate) fn spawn(builder: ModelBuilder, hooks: LoadHooks) -> LoadHandle {
        let progress = Arc::new(Mutex::new(LoadProgress::default()));
        let cancel = hooks.cancel.clone().unwrap_or_default();
        let user = hooks.progress.clone();
        let p2 = progress.clone();
        let hooks = LoadHooks {
            progress: Some(Arc::new(move |p: &LoadProgress| {
                *p2.lock().unwrap_or_else(|e| e.into_inner()) = *p;
                if let Some(f) = &user {
                    f(p);
                }
            })),
            cancel: Some(cancel.clone()),
        };
        let (tx, rx) = channel(Flow::Free);
        let spawned = std::thread::Builder::new()
            .name("gemma-wgpu loading".into())
            .spawn(move || {
                // A panicking progress callback ends the load with an error (what it had
                // uploaded is dropped during the unwind).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    builder.build_hooked(&hooks)
                }))
                .unwrap_or_else(|p| {
                    Err(Error::Panicked(crate::generate::background::panic_message(
                        p.as_ref(),
                    )))
                });
                tx.finish(r)
            });
        let result = match spawned {
            Ok(_) => rx,
            Err(e) => channel::ready(Err(Error::InvalidArgument(format!(
                "cannot start the loading thread: {e}"
            )))),
        };
        LoadHandle {
            result,
            progress,
            taken: false,
            cancel,
        }
    }

    /// The latest progress event.
    pub fn progress(&self) -> LoadProgress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether loading has ended (with a model or an error).
    pub fn is_finished(&self) -> bool {
        self.result.is_closed()
    }

    /// Requests cancellation: loading stops after the tensor being uploaded with
    /// [`Error::Cancelled`] and releases everything it uploaded.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The result once loading has ended, without blocking; `None` while it runs (and after
    /// the result was taken).
    pub fn try_take(&mut self) -> Option<Result<Model>> {
        let r = self.result.try_recv();
        self.taken |= r.is_some();
        r
    }

    /// Blocks until loading has ended and returns the model.
    pub fn wait(mut self) -> Result<Model> {
        let r = self.result.recv();
        self.taken = true;
        r.unwrap_or_else(|| Err(Error::InvalidArgument("the model was already taken".into())))
    }
}

impl Future for LoadHandle {
    type Output = Result<Model>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.result.poll_recv(cx) {
            Poll::Ready(r) => {
                this.taken = true;
                Poll::Ready(r.unwrap_or_else(|| {
                    Err(Error::InvalidArgument("the model was already taken".into()))
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        if !self.is_finished() && !self.taken {
            self.cancel.cancel();
        }
    }
}
