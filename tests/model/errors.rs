//! GPU failures come back as `GpuError` values, never as panics or only through the
//! uncaptured-error handler; and a host-owned device keeps its own handlers.

use crate::common;

use std::sync::{Arc, Mutex};

use common::{gpu, paths};
use gemma_wgpu::gpu::ops::{Elementwise, elementwise};
use gemma_wgpu::gpu::{Access, DType, GpuContext, GpuError, GpuTensor, KernelSpec};

/// Dispatching with a binding larger than `max_storage_buffer_binding_size` is refused up front.
#[test]
fn binding_larger_than_the_limit_is_limit_exceeded() {
    for (path, ctx) in paths() {
        let caps = ctx.caps().clone();
        let size = caps.max_binding_size + 1024;
        if size > caps.max_buffer_size || size > (1 << 30) {
            eprintln!(
                "{path}: binding limit {} too large to test cheaply",
                caps.max_binding_size
            );
            continue;
        }
        let big = GpuTensor::from_buffer(
            &ctx,
            ctx.create_storage("too big", size).unwrap(),
            &[(size / 4) as usize],
            DType::F32,
        );
        let small = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
        let mut rec = ctx.recorder();
        // a 4-element view of the big buffer: ops bind whole buffers, so the binding is too big
        let err = elementwise(
            &mut rec,
            Elementwise::Scale(2.0),
            &big.view(0, &[4]),
            None,
            &small,
        )
        .unwrap_err();
        match err {
            GpuError::LimitExceeded {
                limit_name, needed, ..
            } => {
                assert_eq!(limit_name, "max_storage_buffer_binding_size");
                assert_eq!(needed, size);
            }
            other => panic!("{path}: expected LimitExceeded, got {other:?}"),
        }
        assert!(rec.is_empty());
        ctx.check_health().unwrap();
    }
}

/// A buffer larger than `max_buffer_size` is refused without touching the device.
#[test]
fn buffer_larger_than_the_limit_is_limit_exceeded() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.caps().max_buffer_size;
    match ctx.create_storage("huge", limit + 4) {
        Err(GpuError::LimitExceeded {
            limit_name,
            limit: l,
            ..
        }) => {
            assert_eq!(limit_name, "max_buffer_size");
            assert_eq!(l, limit);
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    ctx.check_health().unwrap();
}

/// A spec whose access list does not match the shader's bindings fails pipeline creation.
#[test]
fn mismatched_access_list_is_an_error() {
    for (path, ctx) in paths() {
        // the binary elementwise shader declares read, read, read_write at bindings 1..3
        let wrong_access = KernelSpec::new(
            "elementwise",
            "main",
            &[Access::Read, Access::Read, Access::Read],
        )
        .define("EXPR", "a + b")
        .define("BINARY", "1");
        let too_few = KernelSpec::new("elementwise", "main", &[Access::Read, Access::ReadWrite])
            .define("EXPR", "a + b")
            .define("BINARY", "1");
        for (what, spec) in [
            ("wrong access", wrong_access),
            ("too few bindings", too_few),
        ] {
            match ctx.kernel(&spec) {
                Err(GpuError::Validation { .. }) => {}
                other => panic!("{path} {what}: expected a validation error, got {other:?}"),
            }
        }
        ctx.check_health().unwrap();
    }
}

/// WGSL that does not compile, or names a missing entry point, is an error from `ctx.kernel`.
#[test]
fn invalid_shader_is_an_error() {
    for (path, ctx) in paths() {
        let bad_expr = KernelSpec::new("elementwise", "main", &[Access::Read, Access::ReadWrite])
            .define("EXPR", "a +* undefined_name")
            .define("BINARY", "0");
        assert!(
            matches!(ctx.kernel(&bad_expr), Err(GpuError::Validation { .. })),
            "{path}: bad expression"
        );
        let no_entry = KernelSpec::new(
            "elementwise",
            "no_such_entry",
            &[Access::Read, Access::ReadWrite],
        )
        .define("EXPR", "a")
        .define("BINARY", "0");
        assert!(
            matches!(ctx.kernel(&no_entry), Err(GpuError::Validation { .. })),
            "{path}: missing entry point"
        );
        let no_file = KernelSpec::new("no_such_file", "main", &[]);
        assert!(matches!(ctx.kernel(&no_file), Err(GpuError::Kernel { .. })));
        ctx.check_health().unwrap();
    }
}

/// Wrong bindings at dispatch time: a count mismatch, a buffer without STORAGE usage, and one
/// buffer bound both read-only and writable (caught when the work is submitted).
#[test]
fn wrong_bindings_are_errors() {
    for (path, ctx) in paths() {
        let kernel = ctx.kernel(&Elementwise::Add.spec(false)).unwrap();
        let a = GpuTensor::from_f32(&ctx, &[4], &[1.0; 4]).unwrap();
        let mut rec = ctx.recorder();
        let params = [0u32; 8];
        assert!(matches!(
            rec.dispatch(&kernel, &params, &[(&a.buffer).into()], [1, 1, 1]),
            Err(GpuError::Kernel { .. })
        ));
        let not_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform only"),
            size: 64,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        let r = rec.dispatch(
            &kernel,
            &params,
            &[
                (&a.buffer).into(),
                (&a.buffer).into(),
                (&not_storage).into(),
            ],
            [1, 1, 1],
        );
        assert!(
            matches!(r, Err(GpuError::Validation { .. })),
            "{path}: non-storage buffer: {r:?}"
        );
        // in-place add with `out == a`: read-only and read_write use of one buffer in a dispatch
        let mut rec = ctx.recorder();
        elementwise(&mut rec, Elementwise::Add, &a, Some(&a), &a).unwrap();
        let r = rec.finish();
        assert!(
            matches!(r, Err(GpuError::Validation { .. })),
            "{path}: conflicting usage: {r:?}"
        );
        // the device is still usable afterwards
        let out = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
        let mut rec = ctx.recorder();
        elementwise(&mut rec, Elementwise::Add, &a, Some(&a), &out).unwrap();
        rec.finish().unwrap();
        assert_eq!(out.to_f32(&ctx).unwrap(), vec![2.0; 4]);
        ctx.check_health().unwrap();
    }
}

/// `GpuContext::from_device` on a device the host created: ops work, and the host's
/// uncaptured-error handler stays installed.
#[test]
fn host_device_keeps_its_handler() {
    if gpu().is_none() {
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("device");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let seen = seen.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            seen.lock().unwrap().push(e.to_string());
        }));
    }
    let ctx = GpuContext::from_device(device.clone(), queue);
    assert_eq!(ctx.adapter_name(), "host device");
    assert!(!ctx.uses_subgroups(), "no SUBGROUP feature was requested");

    let a = GpuTensor::from_f32(&ctx, &[5], &[1.0, -2.0, 3.0, 0.5, 7.0]).unwrap();
    let b = GpuTensor::from_f32(&ctx, &[5], &[10.0, 20.0, 30.0, 40.0, 50.0]).unwrap();
    let out = GpuTensor::zeros(&ctx, &[5], DType::F32).unwrap();
    let mut rec = ctx.recorder();
    elementwise(&mut rec, Elementwise::Add, &a, Some(&b), &out).unwrap();
    rec.finish().unwrap();
    assert_eq!(
        out.to_f32(&ctx).unwrap(),
        vec![11.0, 18.0, 33.0, 40.5, 57.0]
    );
    // engine errors are caught by its error scopes, not by the host's handler
    assert!(
        ctx.kernel(
            &KernelSpec::new("elementwise", "main", &[])
                .define("EXPR", "a")
                .define("BINARY", "0")
        )
        .is_err()
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "engine error leaked: {:?}",
        seen.lock().unwrap()
    );

    // an error outside any scope still reaches the host's own handler
    let _bad = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid usage"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the host's handler was replaced"
    );
    // and the engine context does not report the host's error as its own
    ctx.check_health().unwrap();
}
