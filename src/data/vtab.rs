//! VTAB-1k in the layout of Zhang et al. 2022 (NOAH), which the IPA paper's vision experiments
//! read: one folder per task, `<root>/<task>/`, holding the split lists `train800val200.txt`,
//! `train800.txt`, `val200.txt` and `test.txt`. Each line of a list is
//! `relative/image/path label`, the path relative to the task folder and the label a class
//! index.
//!
//! Class names (for the text prompts "a photo of a {class}") come from a `classnames.txt` in
//! the task folder when there is one (one name per line, in label order), otherwise from the
//! built-in lists of the 19 VTAB-1k tasks ([`builtin_class_names`]).
//!
//! Loading is strict: every error names the file, and the line where there is one (malformed
//! lines, labels outside the class list, missing images, empty splits). Images are decoded
//! lazily, with [`preprocess_image`] (SigLIP's processor: resize, scale to `[-1, 1]`):
//!
//! * [`VtabDataset::batches`] decodes batch by batch and reports unreadable images as errors:
//!   for evaluation over the (large) test lists;
//! * [`VtabDataset::preload`] decodes a whole split once, up front, and returns
//!   [`VtabImages`]: a burn [`Dataset`] of decoded images whose [`VtabBatcher`] cannot fail,
//!   for burn's data loaders during training (VTAB-1k trains on 1000 images). The pixels are
//!   kept as their 8-bit levels (a quarter of the memory of `f32`) when every value is exactly
//!   the value the preprocessing gives an 8-bit level, as with SigLIP's 8-bit resize, and as
//!   `f32` otherwise; batches get the same values bit for bit either way.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::models::siglip::{preprocess_image, preprocess_rgb8, ResizeFilter};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Class names
// ---------------------------------------------------------------------------------------------

/// The VTAB-1k tasks with built-in class names, in the spelling of their folders. The CIFAR-100
/// task's folder is also found as `cifar` (its name in the layout of Zhang et al.).
pub const VTAB_TASKS: [&str; 19] = [
    "caltech101",
    "cifar100",
    "clevr_count",
    "clevr_dist",
    "diabetic_retinopathy",
    "dmlab",
    "dsprites_loc",
    "dsprites_ori",
    "dtd",
    "eurosat",
    "kitti",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "patch_camelyon",
    "resisc45",
    "smallnorb_azi",
    "smallnorb_ele",
    "sun397",
    "svhn",
];

/// The built-in class lists, one name per line in label order, by task.
const CLASS_LISTS: [(&str, &str); 19] = [
    ("caltech101", include_str!("vtab_classnames/caltech101.txt")),
    ("cifar100", include_str!("vtab_classnames/cifar100.txt")),
    (
        "clevr_count",
        include_str!("vtab_classnames/clevr_count.txt"),
    ),
    ("clevr_dist", include_str!("vtab_classnames/clevr_dist.txt")),
    (
        "diabetic_retinopathy",
        include_str!("vtab_classnames/diabetic_retinopathy.txt"),
    ),
    ("dmlab", include_str!("vtab_classnames/dmlab.txt")),
    (
        "dsprites_loc",
        include_str!("vtab_classnames/dsprites_loc.txt"),
    ),
    (
        "dsprites_ori",
        include_str!("vtab_classnames/dsprites_ori.txt"),
    ),
    ("dtd", include_str!("vtab_classnames/dtd.txt")),
    ("eurosat", include_str!("vtab_classnames/eurosat.txt")),
    ("kitti", include_str!("vtab_classnames/kitti.txt")),
    (
        "oxford_flowers102",
        include_str!("vtab_classnames/oxford_flowers102.txt"),
    ),
    (
        "oxford_iiit_pet",
        include_str!("vtab_classnames/oxford_iiit_pet.txt"),
    ),
    (
        "patch_camelyon",
        include_str!("vtab_classnames/patch_camelyon.txt"),
    ),
    ("resisc45", include_str!("vtab_classnames/resisc45.txt")),
    (
        "smallnorb_azi",
        include_str!("vtab_classnames/smallnorb_azi.txt"),
    ),
    (
        "smallnorb_ele",
        include_str!("vtab_classnames/smallnorb_ele.txt"),
    ),
    ("sun397", include_str!("vtab_classnames/sun397.txt")),
    ("svhn", include_str!("vtab_classnames/svhn.txt")),
];

/// The built-in class names of a VTAB-1k task (label order), or `None` for a task not in
/// [`VTAB_TASKS`] (`cifar` is accepted for `cifar100`).
pub fn builtin_class_names(task: &str) -> Option<Vec<String>> {
    let task = if task == "cifar" { "cifar100" } else { task };
    CLASS_LISTS
        .iter()
        .find(|(name, _)| *name == task)
        .map(|(_, text)| text.lines().map(|l| l.trim().to_string()).collect())
}

/// The name of the class-name file a task folder may hold.
pub const CLASSNAMES_FILE: &str = "classnames.txt";

/// Reads a class-name file: one name per line, in label order (surrounding whitespace
/// trimmed; blank lines at the end ignored, blank lines between names refused).
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let used = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    if used == 0 {
        return Err(Error::file(path, "no class names (expected one per line)"));
    }
    if let Some(i) = lines[..used].iter().position(|l| l.is_empty()) {
        return Err(Error::file(
            path,
            format!(
                "line {}: empty class name (one name per line, in label order)",
                i + 1
            ),
        ));
    }
    Ok(lines[..used].iter().map(|l| l.to_string()).collect())
}

/// The class names of the task in `dir`: its `classnames.txt` if present, else the built-in
/// list of the task named like the folder. Also returns where they came from, for messages.
fn class_names_for(dir: &Path, task: &str) -> Result<(Vec<String>, String)> {
    let file = dir.join(CLASSNAMES_FILE);
    if file.is_file() {
        let names = read_class_names(&file)?;
        return Ok((names, file.display().to_string()));
    }
    match builtin_class_names(task) {
        Some(names) => Ok((names, format!("the built-in class list of `{task}`"))),
        None => Err(Error::file(
            &file,
            format!(
                "missing, and `{task}` is not a VTAB-1k task with built-in class names \
                 ({}); write the class names there, one per line in label order",
                VTAB_TASKS.join(", ")
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Splits and items
// ---------------------------------------------------------------------------------------------

/// The split lists of a VTAB-1k task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VtabSplit {
    /// `train800val200.txt`: the 1000 training images (the paper trains on these).
    Train800Val200,
    /// `train800.txt`: the 800 training images of the hyper-parameter search.
    Train800,
    /// `val200.txt`: the 200 validation images of the hyper-parameter search.
    Val200,
    /// `test.txt`: the test images.
    Test,
}

impl VtabSplit {
    /// Every split.
    pub const ALL: [VtabSplit; 4] = [
        VtabSplit::Train800Val200,
        VtabSplit::Train800,
        VtabSplit::Val200,
        VtabSplit::Test,
    ];

    /// The split's name (`train800val200`, `train800`, `val200`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            VtabSplit::Train800Val200 => "train800val200",
            VtabSplit::Train800 => "train800",
            VtabSplit::Val200 => "val200",
            VtabSplit::Test => "test",
        }
    }

    /// The split list's file name in the task folder.
    pub fn file_name(self) -> &'static str {
        match self {
            VtabSplit::Train800Val200 => "train800val200.txt",
            VtabSplit::Train800 => "train800.txt",
            VtabSplit::Val200 => "val200.txt",
            VtabSplit::Test => "test.txt",
        }
    }
}

impl std::fmt::Display for VtabSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VtabSplit {
    type Err = Error;

    /// Parses a split name or its file name (`test`, `test.txt`, ...).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.strip_suffix(".txt").unwrap_or(s);
        VtabSplit::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown VTAB-1k split `{s}` (expected train800val200, train800, val200 or \
                     test)"
                ))
            })
    }
}

/// One example of a split list: the image file and its class index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtabItem {
    /// The image file (the list's path joined to the task folder).
    pub image: PathBuf,
    /// The class index.
    pub label: usize,
}

impl VtabItem {
    /// Decodes and preprocesses the image (`[3, image_size, image_size]`, values in `[-1, 1]`);
    /// errors name the image file.
    pub fn pixels(&self, image_size: usize) -> Result<Vec<f32>> {
        preprocess_image(&self.image, image_size)
    }
}

/// Reads a split list. `classes` and `source` bound and describe the labels; image paths are
/// resolved against `dir` and must exist.
fn read_split_list(path: &Path, dir: &Path, classes: usize, source: &str) -> Result<Vec<VtabItem>> {
    if !path.is_file() {
        return Err(Error::file(
            path,
            "missing split list (a VTAB-1k task folder holds train800val200.txt, train800.txt, \
             val200.txt and test.txt)",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || {
            Error::file(
                path,
                format!("line {n}: expected `relative/image/path label`, found `{line}`"),
            )
        };
        // The label is the last field, so image paths may contain spaces.
        let (image, label) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(malformed)?;
        let image = image.trim_end();
        if image.is_empty() {
            return Err(malformed());
        }
        let label: usize = label.parse().map_err(|_| {
            Error::file(
                path,
                format!("line {n}: label `{label}` is not a class index (a non-negative integer)"),
            )
        })?;
        if label >= classes {
            return Err(Error::file(
                path,
                format!(
                    "line {n}: label {label} is outside the {classes} classes (0..={}) of {source}",
                    classes - 1
                ),
            ));
        }
        let file = dir.join(image);
        if !file.is_file() {
            return Err(Error::file(
                path,
                format!(
                    "line {n}: image `{image}` not found (looked for {})",
                    file.display()
                ),
            ));
        }
        items.push(VtabItem { image: file, label });
    }
    if items.is_empty() {
        return Err(Error::file(path, "the split is empty (no image lines)"));
    }
    Ok(items)
}

// ---------------------------------------------------------------------------------------------
// The dataset
// ---------------------------------------------------------------------------------------------

/// One split of a VTAB-1k task: image paths and labels, checked at load, decoded on demand.
#[derive(Clone, Debug)]
pub struct VtabDataset {
    task: String,
    dir: PathBuf,
    split: VtabSplit,
    class_names: Vec<String>,
    items: Vec<VtabItem>,
}

impl VtabDataset {
    /// Loads split `split` of task `task` under `root` (the folder `<root>/<task>/`).
    pub fn load(root: &Path, task: &str, split: VtabSplit) -> Result<Self> {
        Self::load_dir(&root.join(task), split)
    }

    /// Loads split `split` of the task folder `dir` (the task is named after the folder).
    ///
    /// Checks the class names, every line of the list (format, label range) and that every
    /// image file exists; images are not decoded here.
    pub fn load_dir(dir: &Path, split: VtabSplit) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(
                dir,
                "not found: expected a VTAB-1k task folder",
            ));
        }
        let task = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (class_names, source) = class_names_for(dir, &task)?;
        let items = read_split_list(
            &dir.join(split.file_name()),
            dir,
            class_names.len(),
            &source,
        )?;
        Ok(Self {
            task,
            dir: dir.to_path_buf(),
            split,
            class_names,
            items,
        })
    }

    /// The task's name (its folder's name).
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The task folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The split loaded.
    pub fn split(&self) -> VtabSplit {
        self.split
    }

    /// Class names in label order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The examples, in list order.
    pub fn items(&self) -> &[VtabItem] {
        &self.items
    }

    /// Batches of up to `batch_size` examples in list order, each decoded when the iterator
    /// reaches it (in parallel over the batch); an unreadable image ends the iteration with an
    /// error naming the file. For evaluation over large splits.
    pub fn batches<'a, B: Backend>(
        &'a self,
        image_size: usize,
        batch_size: usize,
        device: &'a B::Device,
    ) -> impl Iterator<Item = Result<VtabBatch<B>>> + 'a {
        self.items
            .chunks(batch_size.max(1))
            .map(move |chunk| items_batch(chunk, image_size, device))
    }

    /// Batch `index` of the batches of up to `batch_size` examples in list order (as
    /// [`batches`](Self::batches) yields them), decoded now; an unreadable image is an error
    /// naming the file.
    pub fn batch<B: Backend>(
        &self,
        index: usize,
        image_size: usize,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<VtabBatch<B>> {
        let size = batch_size.max(1);
        let start = (index * size).min(self.items.len());
        let end = (start + size).min(self.items.len());
        items_batch(&self.items[start..end], image_size, device)
    }

    /// Decodes every image of the split now (in parallel), for training with burn's data
    /// loaders: the first unreadable image is an error naming the file.
    pub fn preload(&self, image_size: usize) -> Result<VtabImages> {
        if image_size == 0 {
            return Err(Error::Config("image_size must be positive".into()));
        }
        let images = parallel_map(&self.items, |item| {
            Ok(VtabImage {
                pixels: Pixels::store(item.pixels(image_size)?),
                image_size,
                label: item.label,
            })
        })?;
        Ok(VtabImages {
            images,
            image_size,
            class_names: self.class_names.clone(),
        })
    }
}

impl Dataset<VtabItem> for VtabDataset {
    fn get(&self, index: usize) -> Option<VtabItem> {
        self.items.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// The batch of `items`, decoded in parallel.
fn items_batch<B: Backend>(
    items: &[VtabItem],
    image_size: usize,
    device: &B::Device,
) -> Result<VtabBatch<B>> {
    let pixels = parallel_map(items, |item| item.pixels(image_size))?;
    let labels: Vec<usize> = items.iter().map(|item| item.label).collect();
    Ok(vtab_batch(pixels.concat(), &labels, image_size, device))
}

/// `f` over `items` on up to the machine's thread count, results in order; the first error in
/// item order wins.
fn parallel_map<T: Send>(
    items: &[VtabItem],
    f: impl Fn(&VtabItem) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let per = items.len().div_ceil(threads).max(1);
    let f = &f;
    let parts: Vec<Result<Vec<T>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Result<Vec<T>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("image decoding does not panic"))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoded images and the batcher
// ---------------------------------------------------------------------------------------------

/// Preprocessed pixels, shared between the dataset and the batches cut from it.
#[derive(Clone, Debug)]
enum Pixels {
    /// 8-bit levels `q`, standing for the value the preprocessing gives level `q`
    /// ([`level_values`]).
    Levels(Arc<[u8]>),
    /// Any other values.
    Float(Arc<[f32]>),
}

/// The value the preprocessing gives each 8-bit level, found by preprocessing a 16×16 image
/// holding every level once (no resampling at the same size); `None` if the levels do not map
/// to distinct values that way.
fn level_values() -> Option<&'static [f32; 256]> {
    static TABLE: OnceLock<Option<[f32; 256]>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let rgb: Vec<u8> = (0..=255u8).flat_map(|q| [q, q, q]).collect();
            let out = preprocess_rgb8(&rgb, 16, 16, 16, ResizeFilter::default()).ok()?;
            let mut table = [0f32; 256];
            table.copy_from_slice(out.get(..256)?);
            let plane = 256;
            let same_channels = (0..256).all(|i| {
                out[plane + i].to_bits() == out[i].to_bits()
                    && out[2 * plane + i].to_bits() == out[i].to_bits()
            });
            let increasing = table.windows(2).all(|w| w[0] < w[1]);
            (same_channels && increasing).then_some(table)
        })
        .as_ref()
}

impl Pixels {
    /// Keeps the 8-bit levels when every value is exactly (bit for bit) the value of a level.
    fn store(values: Vec<f32>) -> Self {
        let levels: Option<Vec<u8>> = level_values().and_then(|table| {
            values
                .iter()
                .map(|&x| {
                    // The values span [-1, 1] in 255 steps; look around the nearest step.
                    let guess = ((x + 1.0) * 127.5).round();
                    if !(0.0..=255.0).contains(&guess) {
                        return None;
                    }
                    let guess = guess as usize;
                    (guess.saturating_sub(1)..=(guess + 1).min(255))
                        .find(|&q| table[q].to_bits() == x.to_bits())
                        .map(|q| q as u8)
                })
                .collect()
        });
        match levels {
            Some(levels) => Pixels::Levels(levels.into()),
            None => Pixels::Float(values.into()),
        }
    }

    fn extend_into(&self, out: &mut Vec<f32>) {
        match self {
            Pixels::Levels(levels) => {
                let table = level_values().expect("levels are stored only with a table");
                out.extend(levels.iter().map(|&q| table[q as usize]))
            }
            Pixels::Float(values) => out.extend_from_slice(values),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Pixels::Levels(levels) => levels.len(),
            Pixels::Float(values) => values.len() * std::mem::size_of::<f32>(),
        }
    }
}

/// A decoded, preprocessed image and its label.
#[derive(Clone, Debug)]
pub struct VtabImage {
    pixels: Pixels,
    image_size: usize,
    /// The class index.
    pub label: usize,
}

impl VtabImage {
    /// The preprocessed pixels, `[3, image_size, image_size]` row-major, as
    /// [`preprocess_image`] returned them.
    pub fn pixels(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(3 * self.image_size * self.image_size);
        self.pixels.extend_into(&mut out);
        out
    }

    /// Side of the (square) image.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Bytes the pixels take in memory: one per value when kept as 8-bit levels, four
    /// otherwise.
    pub fn stored_bytes(&self) -> usize {
        self.pixels.bytes()
    }
}

/// A split decoded into memory by [`VtabDataset::preload`]: a burn [`Dataset`] of
/// [`VtabImage`]s for [`VtabBatcher`].
#[derive(Clone, Debug)]
pub struct VtabImages {
    images: Vec<VtabImage>,
    image_size: usize,
    class_names: Vec<String>,
}

impl VtabImages {
    /// Side of every image.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Class names in label order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The images, in list order.
    pub fn images(&self) -> &[VtabImage] {
        &self.images
    }

    /// Batches of up to `batch_size` images in list order (never an error; the `Result`
    /// matches [`VtabDataset::batches`]).
    pub fn batches<'a, B: Backend>(
        &'a self,
        batch_size: usize,
        device: &'a B::Device,
    ) -> impl Iterator<Item = Result<VtabBatch<B>>> + 'a {
        self.images
            .chunks(batch_size.max(1))
            .map(move |chunk| Ok(images_batch(chunk, device)))
    }
}

impl Dataset<VtabImage> for VtabImages {
    fn get(&self, index: usize) -> Option<VtabImage> {
        self.images.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.images.len()
    }
}

/// A batch of images and labels.
#[derive(Clone, Debug)]
pub struct VtabBatch<B: Backend> {
    /// Pixels `[batch, 3, image_size, image_size]` in the device's float type.
    pub pixels: Tensor<B, 4>,
    /// Class indices `[batch]`.
    pub labels: Tensor<B, 1, Int>,
}

/// Stacks decoded images ([`VtabImage`]) into a [`VtabBatch`]. It cannot fail: the images were
/// decoded by [`VtabDataset::preload`], which reported unreadable files.
#[derive(Clone, Copy, Debug, Default)]
pub struct VtabBatcher;

impl<B: Backend> Batcher<B, VtabImage, VtabBatch<B>> for VtabBatcher {
    fn batch(&self, items: Vec<VtabImage>, device: &B::Device) -> VtabBatch<B> {
        images_batch(&items, device)
    }
}

/// The batch of decoded images.
///
/// # Panics
/// If the images have different sizes (one [`VtabDataset::preload`] gives them all one size).
fn images_batch<B: Backend>(images: &[VtabImage], device: &B::Device) -> VtabBatch<B> {
    let image_size = images.first().map_or(0, |img| img.image_size);
    assert!(
        images.iter().all(|img| img.image_size == image_size),
        "a VTAB batch mixes image sizes: preload each split with one image_size"
    );
    let mut pixels = Vec::with_capacity(images.len() * 3 * image_size * image_size);
    for img in images {
        img.pixels.extend_into(&mut pixels);
    }
    let labels: Vec<usize> = images.iter().map(|img| img.label).collect();
    vtab_batch(pixels, &labels, image_size, device)
}

/// A batch from concatenated `[3, s, s]` images and their labels.
fn vtab_batch<B: Backend>(
    pixels: Vec<f32>,
    labels: &[usize],
    image_size: usize,
    device: &B::Device,
) -> VtabBatch<B> {
    let n = labels.len();
    let dtype = Tensor::<B, 1>::empty([0], device).dtype();
    let pixels = TensorData::new(pixels, [n, 3, image_size, image_size]).convert_dtype(dtype);
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    VtabBatch {
        pixels: Tensor::from_data(pixels, device),
        labels: Tensor::from_data(TensorData::new(labels, [n]), device),
    }
}
