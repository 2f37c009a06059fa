//! Picking a compute backend at run time: one binary, `--backend flex|ndarray|wgpu|cuda`.
//!
//! Each backend is a cargo feature (`flex` and `ndarray` by default, `wgpu`, `cuda`); a run names one with
//! [`BackendKind`] and hands a [`BackendJob`] to [`run_on`], which instantiates the job's
//! generic body for that backend.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The backends this build may offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU, pure Rust, SIMD kernels and multi-threaded GEMM; bf16 capable (feature `flex`).
    Flex,
    /// CPU, pure Rust, burn's legacy CPU backend (feature `ndarray`).
    Ndarray,
    /// Any GPU through WebGPU: Vulkan, Metal, DX12 (feature `wgpu`).
    Wgpu,
    /// NVIDIA GPUs through CUDA (feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// The backends compiled into this build.
    pub fn available() -> Vec<BackendKind> {
        let mut v = Vec::new();
        if cfg!(feature = "flex") {
            v.push(BackendKind::Flex);
        }
        if cfg!(feature = "ndarray") {
            v.push(BackendKind::Ndarray);
        }
        if cfg!(feature = "wgpu") {
            v.push(BackendKind::Wgpu);
        }
        if cfg!(feature = "cuda") {
            v.push(BackendKind::Cuda);
        }
        v
    }

    /// The lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// A computation written once, generically, and run on whichever backend the user picks.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output>;
}

fn not_built(kind: BackendKind) -> Error {
    Error::Config(format!(
        "backend `{}` is not in this build; rebuild with `--features {}` (built: {})",
        kind.name(),
        kind.name(),
        BackendKind::available()
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A job run with bf16 as the device's default float type: weights, activations, adapters
/// and optimizer state are created in bf16. The projector fits and the losses still compute
/// in f32 (they cast), and checkpoints store what the model holds.
pub struct Bf16<J>(pub J);

impl<J: BackendJob> BackendJob for Bf16<J> {
    type Output = J::Output;
    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output> {
        burn::tensor::backend::set_default_float_dtype::<B>(&device, burn::tensor::DType::BF16)
            .map_err(|e| {
                Error::Config(format!(
                    "--bf16: the {backend_name} backend cannot default to bf16 on this device ({e:?})"
                ))
            })?;
        self.0.run::<B>(device, backend_name)
    }
}

/// Checks that device `index` of `device`'s kind exists on backend `B`.
pub fn check_device<B: Backend>(device: &B::Device, index: usize, name: &str) -> Result<()> {
    use burn::prelude::DeviceOps;
    let count = B::device_count(device.to_id().type_id);
    if index >= count.max(1) {
        return Err(Error::Config(format!(
            "--device {index}: the {name} backend has {} device(s) of this kind (0..{})",
            count.max(1),
            count.max(1) - 1
        )));
    }
    Ok(())
}

/// Runs `job` on backend `B` and `device` (device `index` of its kind), after checking that it
/// exists.
fn run_checked<B: Backend, J: BackendJob>(
    job: J,
    device: B::Device,
    index: usize,
    name: &str,
) -> Result<J::Output> {
    check_device::<B>(&device, index, name)?;
    job.run::<B>(device, name)
}

/// Runs `job` on the chosen backend and device index (its ordinal; CPU backends have only 0).
#[allow(unused_variables)]
pub fn run_on<J: BackendJob>(kind: BackendKind, device_index: usize, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            {
                return run_checked::<burn::backend::Flex, J>(
                    job,
                    Default::default(),
                    device_index,
                    "flex",
                );
            }
            #[allow(unreachable_code)]
            Err(not_built(kind))
        }
        BackendKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            {
                return run_checked::<burn::backend::NdArray<f32>, J>(
                    job,
                    Default::default(),
                    device_index,
                    "ndarray",
                );
            }
            #[allow(unreachable_code)]
            Err(not_built(kind))
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = if device_index == 0 {
                    burn::backend::wgpu::WgpuDevice::DefaultDevice
                } else {
                    burn::backend::wgpu::WgpuDevice::DiscreteGpu(device_index)
                };
                // The default device is whichever adapter wgpu picks; others are discrete GPUs.
                if device_index == 0 {
                    return job.run::<burn::backend::Wgpu>(device, "wgpu");
                }
                return run_checked::<burn::backend::Wgpu, J>(job, device, device_index, "wgpu");
            }
            #[allow(unreachable_code)]
            Err(not_built(kind))
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                configure_cuda_autotune();
                let device = burn::backend::cuda::CudaDevice {
                    index: device_index,
                };
                return run_checked::<burn::backend::Cuda, J>(job, device, device_index, "cuda");
            }
            #[allow(unreachable_code)]
            Err(not_built(kind))
        }
    }
}

/// cubecl's default autotune level leaves most of the GEMM speed on the table on an H100
/// (88 vs 213 TFLOP/s in bf16 measured with burn 0.21); tune at `full` unless the user chose.
#[cfg(feature = "cuda")]
fn configure_cuda_autotune() {
    if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
        std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "full");
    }
}
