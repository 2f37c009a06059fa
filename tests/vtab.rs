//! VTAB-1k: split lists and class names, strict loading errors, decoded batches, and SigLIP
//! classification (evaluation and training steps) on the tiny SigLIP fixture.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::{AdamWConfig, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::{InferenceStep, TrainStep};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::data::vtab::{
    builtin_class_names, read_class_names, VtabBatch, VtabBatcher, VtabDataset, VtabImage,
    VtabItem, VtabSplit, VTAB_TASKS,
};
use burn_ipa::models::siglip::{load_siglip, pixel_batch, preprocess_image, SiglipModel};
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::train::{
    class_prompt, class_prompt_ids, classification_loss, evaluate_vtab, train, RunOptions,
    SiglipClassifier, StepOutput, TrainConfig,
};
use burn_store::ModuleSnapshot;
use common::*;

type B = TestBackend;
type AB = Autodiff<TestBackend>;

/// The fixture's image side and text length.
const IMAGE_SIZE: usize = 32;
const TEXT_LEN: usize = 8;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/siglip2")
}

fn temp_root(tag: &str) -> TempDir {
    common::temp_dir(&format!("vtab-{tag}"))
}

/// A task folder `<root>/<task>` with `n` images under `images/` and every split list holding
/// `lines` (or the given per-split content), plus `classnames` if given.
struct Task {
    root: TempDir,
    dir: PathBuf,
}

impl Task {
    fn new(tag: &str, task: &str, n_images: u32, classnames: Option<&str>) -> Self {
        let root = temp_root(tag);
        let dir = root.join(task);
        for i in 0..n_images {
            write_png(&dir.join(format!("images/img {i}.png")), i);
        }
        if let Some(names) = classnames {
            std::fs::write(dir.join("classnames.txt"), names).unwrap();
        }
        Self { root, dir }
    }

    fn write_all_splits(&self, lines: &str) {
        for split in VtabSplit::ALL {
            self.write(split, lines);
        }
    }

    fn write(&self, split: VtabSplit, lines: &str) {
        std::fs::write(self.dir.join(split.file_name()), lines).unwrap();
    }

    fn list(&self, labels: &[usize]) -> String {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("images/img {i}.png {l}\n"))
            .collect()
    }
}

/// Token ids standing for class prompts: any ids of the fixture's 256-token vocabulary, one
/// distinct row per class, padded with id 1.
fn class_ids(classes: usize) -> Vec<Vec<u32>> {
    (0..classes)
        .map(|c| {
            let mut row = vec![2, 10 + 17 * c as u32, 40 + 29 * c as u32, 7];
            row.resize(TEXT_LEN, 1);
            row
        })
        .collect()
}

fn ids_tensor<Bk: burn::tensor::backend::Backend>(ids: &[Vec<u32>]) -> Tensor<Bk, 2, Int> {
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    Tensor::from_data(
        TensorData::new(flat, [ids.len(), ids[0].len()]),
        &Default::default(),
    )
}

/// Predictions computed with `SiglipModel::forward` alone (HF's path: preprocess, both towers,
/// `logits_per_image`, argmax on the host).
fn reference_predictions(
    model: &SiglipModel<B>,
    images: &[PathBuf],
    ids: &[Vec<u32>],
) -> Vec<usize> {
    let pixels: Vec<Vec<f32>> = images
        .iter()
        .map(|p| preprocess_image(p, IMAGE_SIZE).unwrap())
        .collect();
    let batch = pixel_batch::<B>(&pixels, IMAGE_SIZE, &Default::default()).unwrap();
    let logits = model
        .forward(batch, ids_tensor::<B>(ids))
        .unwrap()
        .logits_per_image;
    let classes = ids.len();
    host(logits)
        .chunks(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        })
        .collect()
}

#[test]
fn builtin_class_names_cover_every_task() {
    let counts = [
        ("caltech101", 102),
        ("cifar100", 100),
        ("clevr_count", 8),
        ("clevr_dist", 6),
        ("diabetic_retinopathy", 5),
        ("dmlab", 6),
        ("dsprites_loc", 16),
        ("dsprites_ori", 16),
        ("dtd", 47),
        ("eurosat", 10),
        ("kitti", 4),
        ("oxford_flowers102", 102),
        ("oxford_iiit_pet", 37),
        ("patch_camelyon", 2),
        ("resisc45", 45),
        ("smallnorb_azi", 18),
        ("smallnorb_ele", 9),
        ("sun397", 397),
        ("svhn", 10),
    ];
    assert_eq!(VTAB_TASKS.len(), counts.len());
    for (task, n) in counts {
        assert!(VTAB_TASKS.contains(&task), "{task}");
        let names = builtin_class_names(task).unwrap();
        assert_eq!(names.len(), n, "{task}");
        for name in &names {
            assert!(!name.is_empty() && name.trim() == name, "{task}: `{name}`");
        }
    }
    assert_eq!(
        builtin_class_names("cifar"),
        builtin_class_names("cifar100")
    );
    assert_eq!(builtin_class_names("cifar100").unwrap()[0], "apple");
    assert_eq!(builtin_class_names("dsprites_ori").unwrap()[15], "1.0");
    assert!(builtin_class_names("imagenet").is_none());
    assert_eq!(class_prompt("tabby cat"), "a photo of a tabby cat");
}

#[test]
fn split_names_and_files() {
    for split in VtabSplit::ALL {
        assert_eq!(split.name().parse::<VtabSplit>().unwrap(), split);
        assert_eq!(split.file_name().parse::<VtabSplit>().unwrap(), split);
        assert_eq!(split.file_name(), format!("{split}.txt"));
    }
    assert_eq!(VtabSplit::Train800Val200.file_name(), "train800val200.txt");
    let err = "valid".parse::<VtabSplit>().unwrap_err().to_string();
    assert!(err.contains("valid"), "{err}");
}

#[test]
fn a_tiny_task_loads_and_evaluates_end_to_end() {
    let model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    let ids = class_ids(3);
    let task = Task::new("e2e", "shapes", 7, Some("circle\nsquare\ntriangle\n"));
    let images: Vec<PathBuf> = (0..7)
        .map(|i| task.dir.join(format!("images/img {i}.png")))
        .collect();
    // Labels chosen so that exactly the even-numbered images are classified correctly.
    let predicted = reference_predictions(&model, &images, &ids);
    let labels: Vec<usize> = predicted
        .iter()
        .enumerate()
        .map(|(i, &p)| if i % 2 == 0 { p } else { (p + 1) % 3 })
        .collect();
    task.write_all_splits(&task.list(&labels));

    let data = VtabDataset::load(&task.root, "shapes", VtabSplit::Test).unwrap();
    assert_eq!(data.task(), "shapes");
    assert_eq!(data.split(), VtabSplit::Test);
    assert_eq!(data.class_names(), ["circle", "square", "triangle"]);
    assert_eq!(data.num_classes(), 3);
    assert_eq!(Dataset::len(&data), 7);
    assert_eq!(
        data.get(1),
        Some(VtabItem {
            image: images[1].clone(),
            label: labels[1]
        })
    );
    assert!(data.get(7).is_none());

    let classifier = SiglipClassifier::new(model.clone(), &ids).unwrap();
    assert_eq!(classifier.num_classes(), 3);

    // Lazily decoded batches (the last one partial).
    let lazy = evaluate_vtab(
        &classifier,
        data.batches::<B>(IMAGE_SIZE, 3, &Default::default()),
    )
    .unwrap();
    assert_eq!(lazy, (4, 7));

    // Preloaded images: the same pixels, bit for bit, and the same accuracy.
    let preloaded = data.preload(IMAGE_SIZE).unwrap();
    assert_eq!(preloaded.len(), 7);
    assert_eq!(preloaded.class_names(), data.class_names());
    for (img, path) in preloaded.images().iter().zip(&images) {
        let want = preprocess_image(path, IMAGE_SIZE).unwrap();
        let got = img.pixels();
        assert_eq!(got.len(), want.len());
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(img.image_size(), IMAGE_SIZE);
        // Kept as one byte per value.
        assert_eq!(img.stored_bytes(), 3 * IMAGE_SIZE * IMAGE_SIZE);
    }
    let eager = evaluate_vtab(&classifier, preloaded.batches::<B>(4, &Default::default())).unwrap();
    assert_eq!(eager, (4, 7));

    // burn's data loader with the batcher, and the classifier's logits against the model's.
    let loader = DataLoaderBuilder::<B, VtabImage, VtabBatch<B>>::new(VtabBatcher)
        .batch_size(5)
        .build(preloaded.clone());
    let batches: Vec<VtabBatch<B>> = loader.iter().collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].pixels.dims(), [5, 3, IMAGE_SIZE, IMAGE_SIZE]);
    let loaded = evaluate_vtab(&classifier, batches.clone().into_iter().map(Ok)).unwrap();
    assert_eq!(loaded, (4, 7));
    let logits = classifier.logits(batches[0].pixels.clone()).unwrap();
    let want = model
        .forward(batches[0].pixels.clone(), ids_tensor::<B>(&ids))
        .unwrap()
        .logits_per_image;
    assert_close(&host(logits), &host(want), 1e-5, "classifier logits");

    // The inference step reports loss, accuracy and predictions of a batch.
    let out = InferenceStep::step(&classifier, batches[0].clone());
    assert_eq!(out.items(), 5);
    assert_eq!(out.predictions, predicted[..5]);
    assert_eq!(out.labels, labels[..5]);
    assert_eq!(out.correct(), Some((3, 5)));
    let want_loss = classification_loss(
        classifier.logits(batches[0].pixels.clone()).unwrap(),
        batches[0].labels.clone(),
    );
    assert_close(&[out.loss()], &host(want_loss), 1e-6, "loss");
}

#[test]
fn class_prompts_are_tokenized_and_padded_to_the_text_length() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let pad = tokenizer.pad_token_id.unwrap();
    let names = vec!["cat".to_string(), "sea lion".to_string()];
    let ids = class_prompt_ids(&tokenizer, &names, 32).unwrap();
    assert_eq!(ids.len(), 2);
    for (row, name) in ids.iter().zip(&names) {
        assert_eq!(row.len(), 32);
        let want = tokenizer.encode(&class_prompt(name), true).unwrap();
        assert_eq!(row[..want.len()], want[..]);
        assert!(row[want.len()..].iter().all(|&t| t == pad));
    }
    let err = class_prompt_ids(&tokenizer, &names, 3)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["a photo of a cat", "3"]);
}

#[test]
fn classification_loss_is_the_mean_cross_entropy() {
    let logits = tensor2::<B>(vec![1.0, 2.0, 0.5, -1.0, 0.0, 3.0], [2, 3]);
    let labels =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &Default::default());
    let lse = |row: &[f64]| row.iter().map(|x| x.exp()).sum::<f64>().ln();
    let want = ((lse(&[1.0, 2.0, 0.5]) - 2.0) + (lse(&[-1.0, 0.0, 3.0]) + 1.0)) / 2.0;
    assert_close(
        &host(classification_loss(logits, labels)),
        &[want],
        1e-6,
        "loss",
    );
}

#[test]
fn tasks_without_classnames_use_the_builtin_list() {
    let task = Task::new("builtin", "eurosat", 2, None);
    task.write_all_splits("images/img 0.png 9\nimages/img 1.png 0\n");
    let data = VtabDataset::load(&task.root, "eurosat", VtabSplit::Train800Val200).unwrap();
    assert_eq!(data.num_classes(), 10);
    assert_eq!(data.class_names(), builtin_class_names("eurosat").unwrap());
    assert_eq!(data.items()[0].label, 9);
    // A classnames.txt in the folder wins over the built-in list.
    std::fs::write(
        task.dir.join("classnames.txt"),
        "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n",
    )
    .unwrap();
    let data = VtabDataset::load(&task.root, "eurosat", VtabSplit::Train800Val200).unwrap();
    assert_eq!(data.num_classes(), 11);
    assert_eq!(data.class_names()[10], "k");
}

/// Loads `split` of `task` and returns the error text.
fn load_err(task: &Task, split: VtabSplit) -> String {
    VtabDataset::load_dir(&task.dir, split)
        .expect_err("the load must fail")
        .to_string()
}

#[track_caller]
fn assert_mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_file_and_line() {
    let good = "images/img 0.png 0\nimages/img 1.png 1\n";

    // Missing task folder.
    let root = temp_root("missing-task");
    let err = VtabDataset::load(&root, "dtd", VtabSplit::Test)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["dtd", "task folder"]);

    // Missing split list.
    let task = Task::new("missing-split", "t", 2, Some("a\nb\n"));
    task.write(VtabSplit::Train800, good);
    let err = load_err(&task, VtabSplit::Val200);
    assert_mentions(&err, &["val200.txt", "missing"]);
    assert!(VtabDataset::load_dir(&task.dir, VtabSplit::Train800).is_ok());

    // Malformed lines: no label, a label that is not an index.
    let task = Task::new("malformed", "t", 2, Some("a\nb\n"));
    task.write(VtabSplit::Train800, "images/img 0.png 0\nimages/img1.png\n");
    let err = load_err(&task, VtabSplit::Train800);
    assert_mentions(
        &err,
        &["train800.txt", "line 2", "relative/image/path label"],
    );
    task.write(
        VtabSplit::Train800,
        "images/img 0.png 0\n\nimages/img 1.png one\n",
    );
    let err = load_err(&task, VtabSplit::Train800);
    assert_mentions(&err, &["train800.txt", "line 3", "`one`"]);
    task.write(VtabSplit::Train800, "images/img 0.png -1\n");
    let err = load_err(&task, VtabSplit::Train800);
    assert_mentions(&err, &["train800.txt", "line 1", "`-1`"]);
    task.write(VtabSplit::Train800, "7\n");
    let err = load_err(&task, VtabSplit::Train800);
    assert_mentions(&err, &["train800.txt", "line 1"]);

    // Label outside the class list.
    task.write(VtabSplit::Test, "images/img 0.png 0\nimages/img 1.png 2\n");
    let err = load_err(&task, VtabSplit::Test);
    assert_mentions(
        &err,
        &[
            "test.txt",
            "line 2",
            "label 2",
            "2 classes",
            "classnames.txt",
        ],
    );

    // Empty split.
    task.write(VtabSplit::Val200, "\n  \n");
    let err = load_err(&task, VtabSplit::Val200);
    assert_mentions(&err, &["val200.txt", "empty"]);

    // Missing image.
    task.write(
        VtabSplit::Train800Val200,
        "images/img 0.png 0\nimages/gone.png 1\n",
    );
    let err = load_err(&task, VtabSplit::Train800Val200);
    assert_mentions(
        &err,
        &[
            "train800val200.txt",
            "line 2",
            "images/gone.png",
            "not found",
        ],
    );

    // No class names: an unknown task without classnames.txt, or a broken classnames.txt.
    let task = Task::new("no-classes", "my_task", 2, None);
    task.write_all_splits(good);
    let err = load_err(&task, VtabSplit::Test);
    assert_mentions(&err, &["classnames.txt", "my_task", "missing"]);
    std::fs::write(task.dir.join("classnames.txt"), "a\n\nb\n").unwrap();
    let err = load_err(&task, VtabSplit::Test);
    assert_mentions(&err, &["classnames.txt", "line 2", "empty"]);
    assert!(read_class_names(&task.dir.join("classnames.txt")).is_err());
    std::fs::write(task.dir.join("classnames.txt"), "\n\n").unwrap();
    let err = load_err(&task, VtabSplit::Test);
    assert_mentions(&err, &["classnames.txt", "no class names"]);
    std::fs::write(task.dir.join("classnames.txt"), " a \r\nb\r\n\r\n").unwrap();
    assert_eq!(
        read_class_names(&task.dir.join("classnames.txt")).unwrap(),
        ["a", "b"]
    );
}

#[test]
fn unreadable_images_are_errors_naming_the_image() {
    let task = Task::new("bad-image", "t", 2, Some("a\nb\n"));
    std::fs::write(task.dir.join("images/notes.png"), b"not an image").unwrap();
    task.write_all_splits("images/img 0.png 0\nimages/notes.png 1\nimages/img 1.png 1\n");
    let data = VtabDataset::load_dir(&task.dir, VtabSplit::Test).unwrap();

    let err = data.preload(IMAGE_SIZE).unwrap_err().to_string();
    assert_mentions(&err, &["notes.png"]);
    assert!(data.preload(0).is_err());

    let device = Default::default();
    let results: Vec<_> = data.batches::<B>(IMAGE_SIZE, 1, &device).collect();
    assert!(results[0].is_ok() && results[2].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert_mentions(&err, &["notes.png"]);

    let model = load_siglip::<B>(&model_dir(), &device).unwrap();
    let classifier = SiglipClassifier::new(model, &class_ids(2)).unwrap();
    let err = evaluate_vtab(&classifier, data.batches::<B>(IMAGE_SIZE, 2, &device))
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["notes.png"]);
}

#[test]
fn classifier_refuses_bad_prompts_and_labels() {
    let device = Default::default();
    let model = load_siglip::<B>(&model_dir(), &device).unwrap();
    assert!(SiglipClassifier::new(model.clone(), &[]).is_err());
    let mut ragged = class_ids(2);
    ragged[1].pop();
    assert!(SiglipClassifier::new(model.clone(), &ragged).is_err());
    let mut out_of_vocab = class_ids(2);
    out_of_vocab[0][0] = 256;
    assert!(SiglipClassifier::new(model.clone(), &out_of_vocab).is_err());
    let too_long = vec![vec![1u32; TEXT_LEN + 1]];
    assert!(SiglipClassifier::new(model.clone(), &too_long).is_err());

    // A split labelled for more classes than the classifier has.
    let task = Task::new("labels", "t", 2, Some("a\nb\nc\n"));
    task.write_all_splits("images/img 0.png 0\nimages/img 1.png 2\n");
    let data = VtabDataset::load_dir(&task.dir, VtabSplit::Test).unwrap();
    let classifier = SiglipClassifier::new(model, &class_ids(2)).unwrap();
    let err = evaluate_vtab(&classifier, data.batches::<B>(IMAGE_SIZE, 2, &device))
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["label 2", "2 classes"]);
}

/// Ids of the adapter tensors that require gradients, by path.
fn trainable_adapter_ids(classifier: &SiglipClassifier<AB>, trained: &[&str]) -> HashSet<ParamId> {
    classifier
        .collect(None, None, false)
        .into_iter()
        .filter(|s| {
            let path = s.full_path();
            path.contains(".adapter.") && trained.iter().any(|t| path.ends_with(t))
        })
        .map(|s| s.tensor_id.unwrap())
        .collect()
}

/// The tiny fixture with adapters on the vision q and v projections, as a classifier over 3
/// classes, on the autodiff backend.
fn adapted_classifier(config: &AdapterConfig) -> SiglipClassifier<AB> {
    let mut model = load_siglip::<AB>(&model_dir(), &Default::default()).unwrap();
    let adapted = model
        .attach_adapters(
            |path| {
                path.starts_with("vision_model.encoder.")
                    && (path.ends_with(".q_proj") || path.ends_with(".v_proj"))
            },
            config,
            |_| ProjectorInit::KaimingUniform,
        )
        .unwrap();
    assert_eq!(adapted.len(), 4);
    SiglipClassifier::new(model, &class_ids(3)).unwrap()
}

fn training_batch() -> VtabBatch<AB> {
    let task = Task::new("train", "shapes", 6, Some("circle\nsquare\ntriangle\n"));
    task.write_all_splits(&task.list(&[0, 1, 2, 0, 1, 2]));
    let data = VtabDataset::load(&task.root, "shapes", VtabSplit::Train800Val200).unwrap();
    let images = data.preload(IMAGE_SIZE).unwrap();
    Batcher::<AB, _, _>::batch(&VtabBatcher, images.images().to_vec(), &Default::default())
}

#[test]
fn train_steps_lower_the_loss_and_touch_only_the_adapters() {
    type Inner = <AB as AutodiffBackend>::InnerBackend;
    let batch = training_batch();
    for (config, trained) in [
        (
            AdapterConfig::lora(2),
            vec!["adapter.projector", "adapter.up"],
        ),
        (AdapterConfig::ipa(2), vec!["adapter.up"]),
    ] {
        let mut classifier = adapted_classifier(&config);
        let ids = trainable_adapter_ids(&classifier, &trained);
        assert_eq!(ids.len(), 4 * trained.len());
        let text_before = host(classifier.text_embeds());
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let mut losses = Vec::new();
        for _ in 0..4 {
            let out = TrainStep::step(&classifier, batch.clone());
            losses.push(out.item.loss());
            assert_eq!(out.item.items(), 6);
            // Gradients for the trainable adapter tensors and nothing else.
            assert_eq!(out.grads.len(), ids.len(), "{trained:?}");
            for &id in &ids {
                assert!(
                    out.grads.get::<Inner, 2>(id).is_some(),
                    "no gradient for an adapter tensor"
                );
            }
            classifier = optim.step(1e-2, classifier, out.grads);
        }
        let record = optim.to_record();
        let keys: HashSet<ParamId> = record.keys().copied().collect();
        assert_eq!(keys, ids, "optimizer state outside the adapters");
        // The loss on the fixed batch went down; the class embeddings did not move.
        let last = InferenceStep::step(&classifier.valid(), batch_inner(&batch)).loss();
        assert!(
            last < losses[0] && losses[3] < losses[0],
            "{trained:?}: {losses:?} then {last}"
        );
        assert_eq!(host(classifier.text_embeds()), text_before);
    }

    // SGD on the same task lowers the loss too.
    let mut classifier = adapted_classifier(&AdapterConfig::lora(2));
    let mut optim = SgdConfig::new().init();
    let first = TrainStep::step(&classifier, batch.clone());
    let first_loss = first.item.loss();
    classifier = optim.step(0.5, classifier, first.grads);
    for _ in 0..3 {
        let out = TrainStep::step(&classifier, batch.clone());
        classifier = optim.step(0.5, classifier, out.grads);
    }
    let last = TrainStep::step(&classifier, batch.clone()).item.loss();
    assert!(last < first_loss, "sgd: {first_loss} then {last}");
}

/// The same batch on the inner backend.
fn batch_inner(batch: &VtabBatch<AB>) -> VtabBatch<<AB as AutodiffBackend>::InnerBackend> {
    VtabBatch {
        pixels: batch.pixels.clone().inner(),
        labels: batch.labels.clone().inner(),
    }
}

#[test]
fn the_training_loop_trains_the_classifier_and_checkpoints_only_adapters() {
    let task = Task::new("loop", "shapes", 6, Some("circle\nsquare\ntriangle\n"));
    task.write_all_splits(&task.list(&[0, 1, 2, 0, 1, 2]));
    let data = VtabDataset::load(&task.root, "shapes", VtabSplit::Train800Val200).unwrap();
    let images = data.preload(IMAGE_SIZE).unwrap();
    let out_dir = temp_root("loop-out");
    let config = TrainConfig {
        learning_rate: 1e-2,
        weight_decay: 0.0,
        epochs: 2,
        batch_size: 3,
        micro_batch_size: 3,
        warmup_steps: 0,
        max_steps: None,
        checkpoint_every: 2,
        valid_every: 0,
        seed: 3,
        ..TrainConfig::default()
    };
    let options = RunOptions {
        out_dir: Some(out_dir.clone()),
        ..RunOptions::default()
    };
    let device = Default::default();
    let outcome = train(
        adapted_classifier(&AdapterConfig::ipa(2)),
        images.images(),
        &config,
        &options,
        &device,
        |batch: &[&VtabImage]| {
            let owned = batch.iter().map(|img| (*img).clone()).collect();
            Batcher::<AB, _, _>::batch(&VtabBatcher, owned, &device)
        },
        None,
    )
    .unwrap();
    assert_eq!(outcome.history.len(), 4);
    assert!(outcome.history.iter().all(|r| r.loss.is_finite()));
    let latest = std::fs::read_to_string(out_dir.join("checkpoints/latest")).unwrap();
    let ids = std::fs::read_to_string(
        out_dir
            .join("checkpoints")
            .join(latest.trim())
            .join("param_ids.json"),
    )
    .unwrap();
    let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&ids).unwrap();
    // The optimizer's parameters: the up-projections of the 4 adapters (IPA's projector is
    // frozen), not the frozen model nor the class embeddings.
    assert_eq!(map.len(), 4, "{map:?}");
    assert!(map.keys().all(|p| p.ends_with(".adapter.up")), "{map:?}");
}
