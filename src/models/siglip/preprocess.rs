//! Image preprocessing as HF's `SiglipImageProcessor` does it: resize, rescale to [−1, 1].

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::{Error, Result};

/// The resampling filter of [`preprocess_image_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResizeFilter {
    /// PIL's bilinear filter (`resample: 2`, the SigLIP-2 processors).
    #[default]
    Bilinear,
    /// PIL's bicubic filter, `a = −0.5` (`resample: 3`, the original SigLIP processors).
    Bicubic,
}

impl ResizeFilter {
    /// Support radius of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            ResizeFilter::Bilinear => 1.0,
            ResizeFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            ResizeFilter::Bilinear => (1.0 - x).max(0.0),
            ResizeFilter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Reads an image file and prepares it as `SiglipImageProcessor` does, with bilinear
/// resampling: see [`preprocess_image_with`].
pub fn preprocess_image(path: &Path, image_size: usize) -> Result<Vec<f32>> {
    preprocess_image_with(path, image_size, ResizeFilter::Bilinear)
}

/// Reads an image file (PNG or JPEG) and prepares it as HF's `SiglipImageProcessor` does:
/// convert to RGB (alpha dropped), resize to `image_size × image_size` (no crop, aspect ratio
/// not kept), rescale by 1/255, normalise with mean 0.5 and std 0.5 to `[-1, 1]`. Returns
/// `3 · image_size²` values, channels first (`[3, H, W]`, row-major). See [`preprocess_rgb8`]
/// for the resampling.
pub fn preprocess_image_with(
    path: &Path,
    image_size: usize,
    filter: ResizeFilter,
) -> Result<Vec<f32>> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open the image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read the image: {e}")))?;
    let img = reader
        .decode()
        .map_err(|e| Error::file(path, format!("not a readable PNG or JPEG image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    preprocess_rgb8(rgb.as_raw(), w as usize, h as usize, image_size, filter)
        .map_err(|e| Error::file(path, e))
}

/// Prepares an interleaved 8-bit RGB image (`[h, w, 3]`, row-major) as
/// [`preprocess_image_with`] does, returning `[3, image_size, image_size]` values in `[-1, 1]`.
///
/// The resize reproduces what HF's default (torchvision) `SiglipImageProcessor` does on an
/// x86 CPU: PyTorch's antialiased `uint8` resize, itself a port of PIL's `Image.resize` (a
/// separable filter whose support widens with the downscaling factor; fixed-point weights; a
/// horizontal pass rounded and clipped to 8 bits, then a vertical pass). PIL proper (the
/// `SiglipImageProcessorPil` backend) keeps 22 fractional bits in its weights where PyTorch
/// keeps about 15, and PyTorch without AVX2 resizes in floating point, so those give the same
/// image up to one grey level (0.008 after normalisation) on some pixels.
pub fn preprocess_rgb8(
    rgb: &[u8],
    width: usize,
    height: usize,
    image_size: usize,
    filter: ResizeFilter,
) -> Result<Vec<f32>> {
    if image_size == 0 {
        return Err(Error::Config("image_size must be positive".into()));
    }
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(Error::shape("RGB image", [height, width, 3], [rgb.len()]));
    }
    let resized = resize_rgb8(rgb, width, height, image_size, image_size, filter);
    let plane = image_size * image_size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // Rescale by 1/255 and normalise with mean = std = 0.5, fused as HF's
            // torchvision backend does it: (x − 127.5) / 127.5 in f32.
            out[c * plane + i] = (px[c] as f32 - 127.5) / 127.5;
        }
    }
    Ok(out)
}

/// One axis of a separable resize: for each output index, the first input index it reads
/// and the fixed-point weights of the inputs, plus the number of fractional bits.
pub(super) struct AxisCoeffs {
    taps: Vec<(usize, Vec<i64>)>,
    precision: u32,
}

/// The filter taps of one axis as PyTorch's antialiased `uint8` resize computes them (after
/// PIL's `precompute_coeffs`): support widened by the downscaling factor, weights normalised
/// to sum 1, then scaled to integers with as many fractional bits (at most 22) as keep the
/// largest weight within `i16`.
pub(super) fn resample_coeffs(in_size: usize, out_size: usize, filter: ResizeFilter) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let inv = 1.0 / filterscale;
    let float_taps: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // Truncation toward zero after adding 0.5, as PIL and PyTorch.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| filter.weight((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect();
    let wt_max = float_taps
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .fold(0.0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22 && ((0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64) < 1 << 15 {
        precision += 1;
    }
    let one = (1u64 << precision) as f64;
    let taps = float_taps
        .into_iter()
        .map(|(xmin, w)| {
            let fixed = w
                .iter()
                .map(|&v| {
                    // Round half away from zero (truncating casts).
                    let v = v * one;
                    if v < 0.0 {
                        (v - 0.5) as i64
                    } else {
                        (v + 0.5) as i64
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    AxisCoeffs { taps, precision }
}

/// One output sample: the weighted sum with rounding, clipped to 8 bits.
pub(super) fn sample(
    coeffs: &AxisCoeffs,
    weights: &[i64],
    first: usize,
    pixel: impl Fn(usize) -> u8,
) -> u8 {
    let half = 1i64 << coeffs.precision >> 1;
    let acc = weights
        .iter()
        .enumerate()
        .fold(half, |acc, (i, &w)| acc + pixel(first + i) as i64 * w);
    (acc >> coeffs.precision).clamp(0, 255) as u8
}

/// Two-pass resize of interleaved RGB: horizontal first (when the width changes), then
/// vertical (when the height changes), each pass rounded and clipped to 8 bits.
pub(super) fn resize_rgb8(
    rgb: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    filter: ResizeFilter,
) -> Vec<u8> {
    let mut cur = rgb.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let coeffs = resample_coeffs(w, out_w, filter);
        let mut next = vec![0u8; out_w * h * 3];
        for y in 0..h {
            let row = &cur[y * w * 3..(y + 1) * w * 3];
            for (xx, (xmin, k)) in coeffs.taps.iter().enumerate() {
                for c in 0..3 {
                    next[(y * out_w + xx) * 3 + c] = sample(&coeffs, k, *xmin, |x| row[x * 3 + c]);
                }
            }
        }
        cur = next;
        cur_w = out_w;
    }
    if out_h != h {
        let coeffs = resample_coeffs(h, out_h, filter);
        let mut next = vec![0u8; cur_w * out_h * 3];
        for (yy, (ymin, k)) in coeffs.taps.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..3 {
                    next[(yy * cur_w + x) * 3 + c] =
                        sample(&coeffs, k, *ymin, |y| cur[(y * cur_w + x) * 3 + c]);
                }
            }
        }
        cur = next;
    }
    cur
}

/// Stacks preprocessed images (each `[3, image_size, image_size]` as from
/// [`preprocess_image`]) into a `[n, 3, image_size, image_size]` batch on `device`.
pub fn pixel_batch<B: Backend>(
    images: &[Vec<f32>],
    image_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let per = 3 * image_size * image_size;
    if let Some((i, img)) = images.iter().enumerate().find(|(_, v)| v.len() != per) {
        return Err(Error::shape(
            format!("image {i}"),
            [3, image_size, image_size],
            [img.len()],
        ));
    }
    let data: Vec<f32> = images.concat();
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    let data = burn::tensor::TensorData::new(data, [images.len(), 3, image_size, image_size])
        .convert_dtype(dtype);
    Ok(Tensor::from_data(data, device))
}
