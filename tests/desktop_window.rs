//! The `desktop` example in a real window: under Xvfb (X11, the Vulkan adapter presenting to an
//! xlib/xcb surface), a scripted run opens the window, captions the fixture image with the tiny
//! fixture model on eframe's own wgpu device, saves a screenshot and exits. The caption it showed
//! must equal the library's caption for the same inputs, and the screenshot must be a real
//! render of the window showing the image.
//!
//! Needs `Xvfb` (Debian: `apt-get install xvfb`; `.ci/run` installs it). Without it the test is
//! skipped with a notice, unless `WGPU_REQUIRE_ADAPTER` is set (CI), where it fails.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::golden::fixtures_dir;
use gemma_wgpu::{ModelBuilder, Request};

const MAX_TOKENS: usize = 12;
const TIMEOUT: Duration = Duration::from_secs(240);

fn required() -> bool {
    std::env::var_os("WGPU_REQUIRE_ADAPTER").is_some()
}

/// Kills a child process of this test when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `Xvfb` on a free display (`-displayfd`); `None` when Xvfb is not installed.
fn start_xvfb() -> Option<(Reaper, String)> {
    let child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1024x768x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !required(),
                "WGPU_REQUIRE_ADAPTER is set but Xvfb cannot be started ({e}); \
                 apt-get install xvfb"
            );
            eprintln!(
                "NOTICE: desktop window test skipped: Xvfb not found ({e}); apt-get install xvfb"
            );
            return None;
        }
    };
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read Xvfb's display number");
    let n: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Xvfb printed {line:?} instead of a display number"));
    Some((Reaper(child), format!(":{n}")))
}

fn newest_mtime(paths: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if let Ok(t) = p.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    newest
}

/// The example binary of this build (target/<profile>/examples/desktop), built first when it
/// is missing or older than the sources.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir
        .join("examples")
        .join(format!("desktop{}", std::env::consts::EXE_SUFFIX));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sources = newest_mtime(&[
        root.join("src"),
        root.join("wgsl"),
        root.join("examples/desktop.rs"),
        root.join("examples/common"),
        root.join("Cargo.toml"),
    ]);
    let fresh = bin
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= sources);
    if !fresh {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&root)
            .args(["build", "--example", "desktop", "--features", "desktop"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build --example desktop");
        assert!(st.success(), "cargo build --example desktop failed");
    }
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// Waits for `child` up to `timeout`; kills it on timeout.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait for the example") {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the desktop example did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn desktop_example_captions_in_a_real_window() {
    let Some(ctx) = common::gpu() else { return };
    let Some((_xvfb, display)) = start_xvfb() else {
        return;
    };
    let bin = example_binary();
    let model_dir = fixtures_dir().join("e2b-like");
    let image_path = fixtures_dir().join("chat/image.png");
    let tmp = std::env::temp_dir().join(format!("gemma-wgpu-desktop-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let shot_path = tmp.join("window.png");
    let text_path = tmp.join("caption.txt");

    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["--model".as_ref(), model_dir.as_os_str()])
        .args(["--image".as_ref(), image_path.as_os_str()])
        .args(["--greedy", "--max-tokens", &MAX_TOKENS.to_string()])
        .args(["--screenshot".as_ref(), shot_path.as_os_str()])
        .args(["--print-text".as_ref(), text_path.as_os_str()])
        .arg("--exit-after-caption")
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the desktop example");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Meanwhile the library's caption for the same inputs and options (the example's
    // `--greedy --max-tokens N`: generation defaults, greedy, N tokens).
    let (dir2, img2) = (model_dir.clone(), image_path.clone());
    let library = std::thread::spawn(move || {
        let model = ModelBuilder::new(dir2.to_str().unwrap())
            .with_context(ctx)
            .build()
            .unwrap();
        let opts = model
            .generation_defaults()
            .clone()
            .with_max_new_tokens(MAX_TOKENS)
            .greedy();
        model
            .generate(Request::caption(&img2).with_options(opts))
            .unwrap()
            .text
    });
    let status = wait_with_timeout(&mut child, TIMEOUT);
    let lines = reader.join().unwrap();
    eprintln!(
        "desktop example: {status} after {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        lines.join("\n")
    );
    assert!(status.success(), "the desktop example failed: {status}");

    // The caption it showed equals the library's.
    let want = library.join().unwrap();
    assert!(!want.trim().is_empty());
    let shown = std::fs::read_to_string(&text_path).expect("the example wrote the caption");
    assert_eq!(shown, want, "caption shown in the window");

    // The screenshot: the window's size in pixels, a real render (many colours), showing the
    // image (most of its colours appear).
    let line = lines
        .iter()
        .find(|l| l.starts_with("screenshot "))
        .expect("the example reported the screenshot");
    let num = |key: &str| -> f32 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let ppp = num("pixels_per_point=");
    let shot = image::open(&shot_path).expect("screenshot PNG").to_rgba8();
    // The example's window: 640 x 600 points.
    let want_w = (640.0 * ppp).round() as u32;
    let want_h = (600.0 * ppp).round() as u32;
    assert!(
        shot.width().abs_diff(want_w) <= 1 && shot.height().abs_diff(want_h) <= 1,
        "screenshot {}x{}, window 640x600 points at {ppp} pixels per point",
        shot.width(),
        shot.height()
    );
    let colours: HashSet<[u8; 4]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 200,
        "only {} colours: blank window?",
        colours.len()
    );
    // The fixture image is coloured noise; the UI is grey. Quantised to 16 levels per channel,
    // most of the image's pixels must find their colour in the screenshot.
    let q = |p: &[u8]| [p[0] >> 4, p[1] >> 4, p[2] >> 4];
    let shot_q: HashSet<[u8; 3]> = shot.pixels().map(|p| q(&p.0)).collect();
    let src = image::open(&image_path).unwrap().to_rgb8();
    let found = src.pixels().filter(|p| shot_q.contains(&q(&p.0))).count();
    let frac = found as f64 / (src.width() * src.height()) as f64;
    assert!(
        frac > 0.5,
        "only {:.0}% of the image's colours are in the screenshot",
        frac * 100.0
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
