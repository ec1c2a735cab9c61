//! A desktop captioning and visual Q&A app (eframe/egui on wgpu): open or drop an image, its
//! caption streams in below it, ask questions about it, stop a generation at any time.
//!
//! The engine runs on eframe's own wgpu device and queue (no second device): the device is
//! created with [`GpuContext::device_descriptor`] so the engine gets the adapter's subgroup and
//! f16 features and binding limits, and [`GpuContext::from_host`] wraps it. The model loads on a
//! worker thread ([`gemma_wgpu::ModelBuilder::build_async`]) with a progress bar; generation
//! runs on worker threads ([`Model::spawn`] of a [`Request`]) and streams into the UI,
//! which repaints on every token.
//!
//! ```sh
//! cargo run --release --features desktop --example desktop -- --model tests/fixtures/e2b-like \
//!     --image tests/fixtures/chat/image.png
//! # Scripted (used by tests/desktop_window.rs): caption, screenshot, exit.
//! cargo run --release --features desktop --example desktop -- --model tests/fixtures/e2b-like \
//!     --image tests/fixtures/chat/image.png --greedy --max-tokens 8 \
//!     --screenshot /tmp/desktop.png --print-text /tmp/caption.txt --exit-after-caption
//! ```

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use eframe::egui;
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupCreateNew};
use gemma_wgpu::gpu::GpuContext;
use gemma_wgpu::{
    GenerationEvent, GenerationHandle, GenerationOptions, LoadHandle, LoadStage, Model, Request,
};

/// Window size in points.
const WINDOW: [f32; 2] = [640.0, 600.0];

#[derive(Parser, Debug)]
#[command(about = "Caption images and ask questions about them (eframe on wgpu)")]
struct Cli {
    #[command(flatten)]
    model: common::ModelArgs,
    /// An image to open at start.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Save a screenshot of the window (PNG) once the caption is complete.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Write the caption text shown in the window to this file once it is complete.
    #[arg(long)]
    print_text: Option<PathBuf>,
    /// Exit once the caption is complete (after the screenshot, if any).
    #[arg(long)]
    exit_after_caption: bool,
}

/// What a generation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Caption,
    Answer(usize),
}

/// The scripted run: screenshot and exit after the caption.
#[derive(Debug, Default)]
enum Script {
    /// Waiting for the caption.
    #[default]
    Waiting,
    /// Caption complete; frames drawn since.
    Settling(u32),
    /// Screenshot requested.
    Shooting,
    /// Done.
    Finished,
}

struct Loaded {
    path: PathBuf,
    texture: egui::TextureHandle,
}

struct App {
    cli: Cli,
    loading: Option<LoadHandle>,
    model: Option<Model>,
    opts: GenerationOptions,
    status: String,
    path_field: String,
    image: Option<Loaded>,
    caption: String,
    caption_done: bool,
    qa: Vec<(String, String)>,
    question: String,
    running: Option<(Target, GenerationHandle)>,
    script: Script,
    shot: Arc<Mutex<Option<Arc<egui::ColorImage>>>>,
    failed: Arc<AtomicBool>,
}

impl App {
    fn new(
        cc: &eframe::CreationContext<'_>,
        cli: Cli,
        failed: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        // The engine on eframe's device and queue.
        let rs = cc
            .wgpu_render_state
            .as_ref()
            .ok_or("eframe was not started with the wgpu renderer")?;
        let gpu = GpuContext::from_host(&rs.adapter, rs.device.clone(), rs.queue.clone());
        eprintln!(
            "engine on eframe's device: {} (subgroups {}, f16 {}, max binding {} MiB)",
            gpu.adapter_name(),
            gpu.caps().subgroups,
            gpu.caps().shader_f16,
            gpu.caps().max_binding_size >> 20
        );
        let repaint = cc.egui_ctx.clone();
        let builder = cli
            .model
            .builder()
            .with_context(gpu)
            .with_progress(move |_| repaint.request_repaint());
        let mut app = App {
            loading: Some(builder.build_async()),
            model: None,
            opts: GenerationOptions::default(),
            status: format!("loading {} ...", cli.model.model),
            path_field: String::new(),
            image: None,
            caption: String::new(),
            caption_done: false,
            qa: Vec::new(),
            question: String::new(),
            running: None,
            script: Script::Waiting,
            shot: Arc::new(Mutex::new(None)),
            failed,
            cli,
        };
        if let Some(p) = app.cli.image.clone() {
            app.path_field = p.display().to_string();
            app.open_image(&cc.egui_ctx, &p);
        }
        Ok(app)
    }

    fn scripted(&self) -> bool {
        self.cli.exit_after_caption
            || self.cli.screenshot.is_some()
            || self.cli.print_text.is_some()
    }

    /// Shows an image and captions it (once the model is there).
    fn open_image(&mut self, ctx: &egui::Context, path: &Path) {
        let img = match image::open(path) {
            Ok(i) => i.to_rgba8(),
            Err(e) => {
                self.status = format!("{}: {e}", path.display());
                return;
            }
        };
        let size = [img.width() as usize, img.height() as usize];
        let color = egui::ColorImage::from_rgba_unmultiplied(size, img.as_raw());
        let texture = ctx.load_texture("image", color, egui::TextureOptions::LINEAR);
        self.stop();
        self.running = None;
        self.image = Some(Loaded {
            path: path.to_path_buf(),
            texture,
        });
        self.caption.clear();
        self.caption_done = false;
        self.qa.clear();
        self.start_caption(ctx);
    }

    fn start_caption(&mut self, ctx: &egui::Context) {
        let (Some(model), Some(img)) = (&self.model, &self.image) else {
            return;
        };
        let repaint = ctx.clone();
        let h = model
            .spawn(Request::caption(img.path.clone()).with_options(self.opts.clone()))
            .with_notify(move || repaint.request_repaint());
        self.running = Some((Target::Caption, h));
        self.status = "captioning ...".into();
    }

    fn ask(&mut self, ctx: &egui::Context) {
        let q = self.question.trim().to_string();
        let (Some(model), Some(img)) = (&self.model, &self.image) else {
            return;
        };
        if q.is_empty() || self.running.is_some() {
            return;
        }
        let repaint = ctx.clone();
        let h = model
            .spawn(
                Request::new(q.as_str())
                    .with_image(img.path.clone())
                    .with_options(self.opts.clone()),
            )
            .with_notify(move || repaint.request_repaint());
        self.qa.push((q, String::new()));
        self.running = Some((Target::Answer(self.qa.len() - 1), h));
        self.question.clear();
        self.status = "answering ...".into();
    }

    fn stop(&mut self) {
        if let Some((_, h)) = &self.running {
            h.cancel();
        }
    }

    /// Drains the loader's and the generation's events (never blocks).
    fn poll(&mut self, ctx: &egui::Context) {
        if let Some(l) = &mut self.loading {
            match l.try_take() {
                Some(Ok(model)) => {
                    self.opts = self.cli.model.options(&model);
                    self.status = format!("loaded on {}", model.context().adapter_name());
                    self.model = Some(model);
                    self.loading = None;
                    self.start_caption(ctx);
                }
                Some(Err(e)) => {
                    self.status = format!("loading failed: {e}");
                    self.loading = None;
                    self.fail(ctx, &self.status.clone());
                }
                None => {}
            }
        }
        let mut finished = None;
        if let Some((target, h)) = &self.running {
            while let Some(ev) = h.try_recv() {
                match ev {
                    GenerationEvent::Delta(d) => match *target {
                        Target::Caption => self.caption.push_str(&d),
                        Target::Answer(i) => self.qa[i].1.push_str(&d),
                    },
                    GenerationEvent::Done(r) => finished = Some((*target, r)),
                }
            }
        }
        if let Some((target, r)) = finished {
            self.running = None;
            match r {
                Ok(reply) => {
                    self.status = format!(
                        "{} tokens, {:?}, decode {:.1} tok/s",
                        reply.tokens.len(),
                        reply.finish,
                        reply.stats.decode_tok_per_s
                    );
                    if target == Target::Caption {
                        self.caption_done = true;
                        if self.scripted() {
                            self.script = Script::Settling(0);
                        }
                    }
                }
                Err(e) => {
                    self.status = format!("generation failed: {e}");
                    if target == Target::Caption {
                        self.fail(ctx, &self.status.clone());
                    }
                }
            }
        }
    }

    /// In a scripted run: report the error and exit with a failure status.
    fn fail(&mut self, ctx: &egui::Context, msg: &str) {
        if self.scripted() {
            eprintln!("{msg}");
            self.failed.store(true, Ordering::SeqCst);
            self.script = Script::Finished;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    /// The scripted run: after the caption, let two frames settle, take a screenshot, save it
    /// and the caption text, and exit.
    fn script_step(&mut self, ctx: &egui::Context) {
        match self.script {
            Script::Waiting | Script::Finished => {}
            Script::Settling(n) if n < 2 => {
                self.script = Script::Settling(n + 1);
                ctx.request_repaint();
            }
            Script::Settling(_) => {
                if self.cli.screenshot.is_some() {
                    let slot = self.shot.clone();
                    let repaint = ctx.clone();
                    ctx.request_screenshot(move |img| {
                        if let Ok(mut s) = slot.lock() {
                            *s = Some(img);
                        }
                        repaint.request_repaint();
                    });
                    self.script = Script::Shooting;
                } else {
                    self.finish_script(ctx, None);
                }
                ctx.request_repaint();
            }
            Script::Shooting => {
                let shot = self.shot.lock().ok().and_then(|mut s| s.take());
                match shot {
                    Some(img) => self.finish_script(ctx, Some(img)),
                    None => ctx.request_repaint(),
                }
            }
        }
    }

    fn finish_script(&mut self, ctx: &egui::Context, shot: Option<Arc<egui::ColorImage>>) {
        self.script = Script::Finished;
        let mut ok = true;
        if let (Some(path), Some(img)) = (&self.cli.screenshot, shot) {
            let [w, h] = img.size;
            let rgba: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
            match image::RgbaImage::from_raw(w as u32, h as u32, rgba).map(|i| i.save(path)) {
                Some(Ok(())) => println!(
                    "screenshot {w}x{h} pixels_per_point={} window={}x{} saved to {}",
                    ctx.pixels_per_point(),
                    WINDOW[0],
                    WINDOW[1],
                    path.display()
                ),
                other => {
                    eprintln!(
                        "cannot save the screenshot to {}: {other:?}",
                        path.display()
                    );
                    ok = false;
                }
            }
        }
        if let Some(path) = &self.cli.print_text
            && let Err(e) = std::fs::write(path, &self.caption)
        {
            eprintln!("cannot write {}: {e}", path.display());
            ok = false;
        }
        println!("caption: {}", self.caption);
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
        }
        if self.cli.exit_after_caption || !ok {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn draw(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        ui.horizontal(|ui| {
            ui.label("Image:");
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.path_field)
                    .hint_text("path to an image, or drop one on the window")
                    .desired_width(380.0),
            );
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Open").clicked() || enter {
                let p = PathBuf::from(self.path_field.trim());
                self.open_image(&ctx, &p);
            }
        });
        if let Some(l) = &self.loading {
            let p = l.progress();
            let text = match p.stage {
                LoadStage::Uploading => format!(
                    "uploading weights: {} / {} tensors, {:.1} / {:.1} MiB",
                    p.tensors_done,
                    p.tensors_total,
                    p.bytes_done as f64 / 1048576.0,
                    p.bytes_total as f64 / 1048576.0
                ),
                s => format!("loading: {s:?}"),
            };
            ui.add(egui::ProgressBar::new(p.fraction()).text(text));
        }
        ui.separator();
        match &self.image {
            Some(img) => {
                ui.add(
                    egui::Image::from_texture(&img.texture)
                        .fit_to_exact_size(egui::vec2(400.0, 300.0))
                        .maintain_aspect_ratio(true),
                );
            }
            None => {
                ui.label("Open an image or drop one here.");
            }
        }
        ui.separator();
        ui.strong("Caption");
        let running = matches!(self.running, Some((Target::Caption, _)));
        let text = if self.caption.is_empty() && running {
            "…"
        } else {
            self.caption.as_str()
        };
        ui.label(text);
        egui::ScrollArea::vertical()
            .max_height(90.0)
            .show(ui, |ui| {
                for (q, a) in &self.qa {
                    ui.label(egui::RichText::new(format!("Q: {q}")).italics());
                    ui.label(format!("A: {a}"));
                }
            });
        ui.horizontal(|ui| {
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.question)
                    .hint_text("Ask a question about the image")
                    .desired_width(420.0),
            );
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let can_ask = self.model.is_some() && self.image.is_some() && self.running.is_none();
            if ui.add_enabled(can_ask, egui::Button::new("Ask")).clicked() || (enter && can_ask) {
                self.ask(&ctx);
            }
            if ui
                .add_enabled(self.running.is_some(), egui::Button::new("Stop"))
                .clicked()
            {
                self.stop();
            }
        });
        ui.separator();
        ui.small(&self.status);
        if let Some(m) = &self.model {
            ui.small(m.memory_report().to_string());
        }
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.path_field = p.display().to_string();
            self.open_image(&ctx, &p);
        }
        self.poll(&ctx);
        egui::CentralPanel::default().show(ui, |ui| self.draw(ui));
        self.script_step(&ctx);
    }
}

fn main() -> Result<(), common::Failure> {
    let cli = Cli::parse();
    let failed = Arc::new(AtomicBool::new(false));
    // Create eframe's device with what the engine benefits from (subgroups, f16, the adapter's
    // binding limits); eframe's defaults would give the portable kernels and 128 MiB bindings.
    let setup = WgpuSetupCreateNew {
        device_descriptor: Arc::new(|adapter| {
            let mut d = GpuContext::device_descriptor(adapter);
            d.label = Some("desktop example (egui + gemma-wgpu)");
            d
        }),
        ..WgpuSetupCreateNew::without_display_handle()
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size(WINDOW)
            .with_title("gemma-wgpu"),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: WgpuConfiguration {
            wgpu_setup: WgpuSetup::CreateNew(setup),
            ..Default::default()
        },
        ..Default::default()
    };
    let f2 = failed.clone();
    eframe::run_native(
        "gemma-wgpu desktop",
        options,
        Box::new(move |cc| Ok(Box::new(App::new(cc, cli, f2)?))),
    )?;
    if failed.load(Ordering::SeqCst) {
        std::process::exit(1);
    }
    Ok(())
}
