//! SigLIP parity with HF transformers (`SiglipModel`) on a tiny random checkpoint
//! (`tests/fixtures/models/siglip2`: 2 layers per tower, hidden 64, 32×32 images, 16×16
//! patches), plus config errors, the vision tap and image preprocessing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
use burn_ipa::models::loading::load_weights;
use burn_ipa::models::siglip::{
    load_siglip, pixel_batch, preprocess_image, preprocess_rgb8, siglip_remapper, ResizeFilter,
    SiglipConfig, SiglipModel, SiglipSite,
};
use burn_store::ModuleSnapshot;
use common::*;
use serde_json::Value;

type B = TestBackend;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/siglip2")
}

fn expected() -> Value {
    fixture("models/siglip2/expected.json")
}

/// Every number of a nested JSON array, in row-major order, with the array's shape.
fn flat(v: &Value) -> (Vec<f64>, Vec<usize>) {
    fn walk(v: &Value, depth: usize, out: &mut Vec<f64>, shape: &mut Vec<usize>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                for item in items {
                    walk(item, depth + 1, out, shape);
                }
            }
            other => out.push(other.as_f64().expect("number")),
        }
    }
    let (mut out, mut shape) = (Vec::new(), Vec::new());
    walk(v, 0, &mut out, &mut shape);
    (out, shape)
}

fn pixels(expected: &Value) -> Tensor<B, 4> {
    let (values, shape) = flat(&expected["pixel_values"]);
    assert_eq!(shape, [2, 3, 32, 32]);
    let device = Default::default();
    let dtype = Tensor::<B, 1>::zeros([1], &device).dtype();
    Tensor::from_data(
        TensorData::new(values, [2, 3, 32, 32]).convert_dtype(dtype),
        &device,
    )
}

fn ids(expected: &Value) -> Tensor<B, 2, Int> {
    let (values, shape) = flat(&expected["input_ids"]);
    assert_eq!(shape, [3, 8]);
    let values: Vec<i64> = values.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(values, [3, 8]), &Default::default())
}

fn check<const D: usize>(got: Tensor<B, D>, expected: &Value, key: &str, tol: f64, what: &str) {
    let (want, shape) = flat(&expected[key]);
    assert_eq!(
        got.shape().dims::<D>().to_vec(),
        shape,
        "{what}: {key} shape"
    );
    assert_close(&host(got), &want, tol, &format!("{what}: {key}"));
}

/// Compares every output of the fixture with the model's.
fn compare_all(model: &SiglipModel<B>, expected: &Value, tol: f64, what: &str) {
    let (pixel_values, input_ids) = (pixels(expected), ids(expected));

    let (vision_last, vision_pooled) = model.vision_model.forward(pixel_values.clone()).unwrap();
    check(vision_last, expected, "vision_last_hidden_state", tol, what);
    check(vision_pooled, expected, "vision_pooler_output", tol, what);

    let (text_last, text_pooled) = model.text_model.forward(input_ids.clone()).unwrap();
    check(text_last, expected, "text_last_hidden_state", tol, what);
    check(text_pooled, expected, "text_pooler_output", tol, what);

    let out = model.forward(pixel_values, input_ids).unwrap();
    check(out.image_embeds, expected, "image_embeds", tol, what);
    check(out.text_embeds, expected, "text_embeds", tol, what);
    check(
        out.logits_per_image,
        expected,
        "logits_per_image",
        tol,
        what,
    );
    let (want, _) = flat(&expected["logits_per_image"]);
    assert_close(
        &host(out.logits_per_text),
        &transpose(&want, 2, 3),
        tol,
        &format!("{what}: logits_per_text"),
    );

    for key in ["logit_scale", "logit_bias"] {
        let param = if key == "logit_scale" {
            model.logit_scale.val()
        } else {
            model.logit_bias.val()
        };
        let want = expected[key].as_f64().unwrap();
        assert_close(&host(param), &[want], tol, &format!("{what}: {key}"));
    }
}

#[test]
fn siglip_matches_transformers() {
    let expected = expected();
    assert_eq!(expected["model_type"], "siglip");
    let model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    compare_all(&model, &expected, 1e-4, "siglip f32");
}

#[test]
fn siglip_loads_bf16_weights_into_an_f32_model() {
    let dir = model_dir();
    let config = SiglipConfig::from_file(&dir.join("config.json")).unwrap();
    let mut model = SiglipModel::<B>::init(&config, &Default::default());
    load_weights(
        &mut model,
        &[dir.join("model_bf16.safetensors")],
        siglip_remapper(),
        DType::F32,
    )
    .unwrap();
    // Every parameter is the f32 checkpoint's, rounded to bf16 (relative error ≤ 2⁻⁹), in the
    // same place and layout.
    let f32_model = load_siglip::<B>(&dir, &Default::default()).unwrap();
    let params = |m: &SiglipModel<B>| -> BTreeMap<String, Vec<f64>> {
        m.collect(None, None, false)
            .into_iter()
            .map(|s| {
                let data = s.to_data().unwrap().convert::<f64>();
                (s.full_path(), data.to_vec::<f64>().unwrap())
            })
            .collect()
    };
    let (got, want) = (params(&model), params(&f32_model));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        let g = &got[path];
        assert_eq!(g.len(), w.len(), "{path}");
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() <= b.abs() / 256.0 + 1e-30,
                "{path}: {a} vs {b}"
            );
        }
    }
    // The reference outputs were computed with the f32 weights, not the bf16-rounded ones:
    // rounding every weight to bf16 moves the outputs by up to ~2e-2 (relative to 1 + |x|),
    // hence the loose tolerance.
    compare_all(&model, &expected(), 3e-2, "siglip bf16 weights");
}

#[test]
fn remapper_sends_linear_weights_under_base_and_keeps_the_rest() {
    let remap = |key: &str| {
        let mut out = key.to_string();
        for (re, to) in siglip_remapper().to_regex_pairs() {
            out = re.replace(&out, to.as_str()).into_owned();
        }
        out
    };
    let cases = [
        (
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_model.encoder.layers.0.self_attn.q_proj.base.weight",
        ),
        (
            "text_model.encoder.layers.1.self_attn.out_proj.bias",
            "text_model.encoder.layers.1.self_attn.out_proj.base.bias",
        ),
        (
            "text_model.encoder.layers.1.mlp.fc2.weight",
            "text_model.encoder.layers.1.mlp.fc2.base.weight",
        ),
        ("text_model.head.weight", "text_model.head.base.weight"),
        ("text_model.head.bias", "text_model.head.base.bias"),
        (
            "vision_model.head.attention.out_proj.weight",
            "vision_model.head.attention.out_proj.base.weight",
        ),
        (
            "vision_model.head.mlp.fc1.bias",
            "vision_model.head.mlp.fc1.base.bias",
        ),
        // Not linear layers: unchanged.
        ("vision_model.head.probe", "vision_model.head.probe"),
        (
            "vision_model.head.attention.in_proj_weight",
            "vision_model.head.attention.in_proj_weight",
        ),
        (
            "vision_model.head.attention.in_proj_bias",
            "vision_model.head.attention.in_proj_bias",
        ),
        (
            "vision_model.head.layernorm.weight",
            "vision_model.head.layernorm.weight",
        ),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.patch_embedding.weight",
        ),
        (
            "text_model.final_layer_norm.bias",
            "text_model.final_layer_norm.bias",
        ),
        ("logit_scale", "logit_scale"),
    ];
    for (from, to) in cases {
        assert_eq!(remap(from), to, "{from}");
    }
}

#[test]
fn siglip_config_reads_both_towers() {
    let config = SiglipConfig::from_file(&model_dir().join("config.json")).unwrap();
    let (t, v) = (&config.text_config, &config.vision_config);
    assert_eq!(
        (
            t.vocab_size,
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads
        ),
        (256, 64, 2, 4)
    );
    assert_eq!((t.max_position_embeddings, t.projection_size), (8, 64));
    assert_eq!((v.image_size, v.patch_size, v.num_channels), (32, 16, 3));
    assert_eq!(v.num_patches(), 4);
    assert_eq!(v.layer_norm_eps, 1e-6);
}

fn write_config(tag: &str, config: &Value) -> TempDir {
    let dir = temp_dir(&format!("config-{tag}"));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn bad_config_errors_name_the_file_and_key() {
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("config.json")).unwrap())
            .unwrap();

    let mut wrong_type = base.clone();
    wrong_type["model_type"] = "clip".into();
    let dir = write_config("type", &wrong_type);
    let err = load_siglip::<B>(&dir, &Default::default())
        .expect_err("a clip config must be refused")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("model_type"), "{err}");
    assert!(err.contains("clip"), "{err}");

    let mut bad_act = base.clone();
    bad_act["vision_config"]["hidden_act"] = "relu".into();
    let dir = write_config("act", &bad_act);
    let err = SiglipConfig::from_file(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("vision_config.hidden_act"), "{err}");

    let mut bad_heads = base.clone();
    bad_heads["text_config"]["num_attention_heads"] = 5.into();
    let dir = write_config("heads", &bad_heads);
    let err = SiglipConfig::from_file(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text_config.num_attention_heads"), "{err}");

    let mut no_vision = base;
    no_vision.as_object_mut().unwrap().remove("vision_config");
    let dir = write_config("novision", &no_vision);
    let err = SiglipConfig::from_file(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vision_config"), "{err}");
}

#[test]
fn wrong_input_shapes_are_errors() {
    let model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    let device = Default::default();
    let small = Tensor::<B, 4>::zeros([1, 3, 16, 16], &device);
    assert!(model.vision_model.forward(small).is_err());
    let long = Tensor::<B, 2, Int>::zeros([1, 9], &device);
    assert!(model.text_model.forward(long).is_err());
}

#[test]
fn vision_tap_reports_the_normed_inputs_of_every_layer() {
    let model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    let expected = expected();
    let pixel_values = pixels(&expected);
    let mut taps: BTreeMap<(usize, SiglipSite), Vec<f64>> = BTreeMap::new();
    let mut calls = 0;
    let (last, pooled) = model
        .vision_model
        .forward_tap(
            pixel_values.clone(),
            &mut |layer: usize, site: SiglipSite, rows: Tensor<B, 2>| {
                calls += 1;
                assert_eq!(rows.shape().dims::<2>(), [2 * 4, 64]);
                taps.insert((layer, site), host(rows));
            },
        )
        .unwrap();
    let layers = model.vision_model.config.num_hidden_layers;
    assert_eq!(calls, layers * 2);
    assert_eq!(taps.len(), layers * 2);
    // Tapping does not change the outputs.
    check(last, &expected, "vision_last_hidden_state", 1e-4, "tap");
    check(pooled, &expected, "vision_pooler_output", 1e-4, "tap");
    // Layer 0's attention site is layer_norm1 of the embeddings.
    let embeddings = model.vision_model.embeddings.forward(pixel_values);
    let want = model.vision_model.encoder.layers[0]
        .layer_norm1
        .forward(embeddings)
        .reshape([8, 64]);
    assert_close(
        &taps[&(0, SiglipSite::Attention)],
        &host(want),
        1e-5,
        "layer 0 attention input",
    );
    assert_eq!(
        SiglipSite::Attention.targets(),
        ["q_proj", "k_proj", "v_proj"]
    );
    assert_eq!(SiglipSite::Mlp.targets(), ["fc1"]);
}

#[test]
fn zero_adapters_on_vision_q_and_v_leave_the_outputs_unchanged() {
    let mut model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    let adapted = model
        .attach_adapters(
            |path| {
                path.starts_with("vision_model.encoder.")
                    && (path.ends_with(".q_proj") || path.ends_with(".v_proj"))
            },
            &AdapterConfig::ipa(4),
            |_| ProjectorInit::Zeros,
        )
        .unwrap();
    assert_eq!(
        adapted,
        [
            "vision_model.encoder.layers.0.self_attn.q_proj",
            "vision_model.encoder.layers.0.self_attn.v_proj",
            "vision_model.encoder.layers.1.self_attn.q_proj",
            "vision_model.encoder.layers.1.self_attn.v_proj",
        ]
    );
    let expected = expected();
    let (_, pooled) = model.vision_model.forward(pixels(&expected)).unwrap();
    check(
        pooled,
        &expected,
        "vision_pooler_output",
        1e-4,
        "zero adapters",
    );
    // Both towers, the pooling head and the text head are all reachable.
    let paths: Vec<String> = model.linears_mut().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths.len(), 2 * 2 * 6 + 3 + 1);
    assert!(paths.contains(&"vision_model.head.attention.out_proj".to_string()));
    assert!(paths.contains(&"text_model.head".to_string()));
}

fn temp_dir(tag: &str) -> TempDir {
    common::temp_dir(&format!("siglip-{tag}"))
}

fn write_png(path: &Path) {
    // A 4×4 RGB image with black, white and two primaries.
    let mut img = image::RgbImage::new(4, 4);
    for (x, y, px) in img.enumerate_pixels_mut() {
        *px = match (x < 2, y < 2) {
            (true, true) => image::Rgb([0, 0, 0]),
            (false, true) => image::Rgb([255, 255, 255]),
            (true, false) => image::Rgb([255, 0, 0]),
            (false, false) => image::Rgb([0, 0, 255]),
        };
    }
    img.save(path).unwrap();
}

#[test]
fn preprocess_image_gives_normalised_channels_first_pixels() {
    let dir = temp_dir("png");
    let path = dir.join("tiny.png");
    write_png(&path);

    // Same size: no resampling, exact values.
    let same = preprocess_image(&path, 4).unwrap();
    assert_eq!(same.len(), 3 * 4 * 4);
    let at = |v: &[f32], c: usize, y: usize, x: usize| v[c * 16 + y * 4 + x];
    assert_eq!(
        [at(&same, 0, 0, 0), at(&same, 1, 0, 0), at(&same, 2, 0, 0)],
        [-1.0; 3]
    );
    assert_eq!(
        [at(&same, 0, 0, 3), at(&same, 1, 0, 3), at(&same, 2, 0, 3)],
        [1.0; 3]
    );
    assert_eq!(
        [at(&same, 0, 3, 0), at(&same, 1, 3, 0), at(&same, 2, 3, 0)],
        [1.0, -1.0, -1.0]
    );
    assert_eq!(
        [at(&same, 0, 3, 3), at(&same, 1, 3, 3), at(&same, 2, 3, 3)],
        [-1.0, -1.0, 1.0]
    );

    // Upscaled to the model's size: right shape, values in [-1, 1], corners kept.
    let big = preprocess_image(&path, 32).unwrap();
    assert_eq!(big.len(), 3 * 32 * 32);
    assert!(big.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(big[0], -1.0);
    assert_eq!(big[31], 1.0);

    // It feeds the model.
    let model = load_siglip::<B>(&model_dir(), &Default::default()).unwrap();
    let batch = pixel_batch::<B>(&[big.clone(), big], 32, &Default::default()).unwrap();
    assert_eq!(batch.shape().dims::<4>(), [2, 3, 32, 32]);
    let (_, pooled) = model.vision_model.forward(batch).unwrap();
    assert_eq!(pooled.shape().dims::<2>(), [2, 64]);
    assert!(pixel_batch::<B>(&[vec![0.0; 5]], 32, &Default::default()).is_err());
}

#[test]
fn preprocess_image_errors_name_the_file() {
    let dir = temp_dir("bad-image");
    let missing = dir.join("missing.png");
    let err = preprocess_image(&missing, 32).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");

    let not_image = dir.join("notes.png");
    std::fs::write(&not_image, b"this is not an image").unwrap();
    let err = preprocess_image(&not_image, 32).unwrap_err().to_string();
    assert!(err.contains("notes.png"), "{err}");

    assert!(preprocess_image(&missing, 0).is_err());
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `preprocess_rgb8` against HF's `SiglipImageProcessor` (torchvision backend, PyTorch's
/// AVX2 `uint8` antialiased resize) on random images, down- and upscaling, bilinear and
/// bicubic: every value equal. The fixture also holds the PIL backend's output, which
/// rounds its fixed-point weights differently (22 fractional bits where PyTorch keeps
/// about 15): it agrees within one grey level.
#[test]
fn preprocess_rgb8_matches_hf_siglip_image_processor() {
    let fx = fixture("image_resize.json");
    let images: Vec<(usize, usize, Vec<u8>)> = fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            (
                im["width"].as_u64().unwrap() as usize,
                im["height"].as_u64().unwrap() as usize,
                unhex(im["rgb"].as_str().unwrap()),
            )
        })
        .collect();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for (n, case) in cases.iter().enumerate() {
        let (w, h, rgb) = &images[case["image"].as_u64().unwrap() as usize];
        let size = case["size"].as_u64().unwrap() as usize;
        let filter = match case["resample"].as_u64().unwrap() {
            2 => ResizeFilter::Bilinear,
            3 => ResizeFilter::Bicubic,
            other => panic!("resample {other}"),
        };
        let tag = format!("{w}x{h} -> {size}, {filter:?}");
        let got = preprocess_rgb8(rgb, *w, *h, size, filter).unwrap();
        assert_eq!(got.len(), 3 * size * size, "{tag}");
        let want: Vec<f32> = unhex(case["levels"].as_str().unwrap())
            .into_iter()
            .map(|l| (l as f32 - 127.5) / 127.5)
            .collect();
        let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(mismatches, 0, "{tag}: {mismatches} values differ from HF's");
        let pil = unhex(case["levels_pil"].as_str().unwrap());
        for (a, l) in got.iter().zip(pil) {
            let level = a * 127.5 + 127.5;
            assert!(
                (level - l as f32).abs() <= 1.0 + 1e-3,
                "{tag}: {level} vs PIL {l}"
            );
        }
        if n == 0 {
            let example: Vec<f32> = fx["pixel_values_example"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got, example, "{tag}: float pixel values");
        }
    }
    // An image already at the target size is only normalised.
    let (w, h, rgb) = &images[2];
    let same = preprocess_rgb8(rgb, *w, *h, 64, ResizeFilter::Bicubic).unwrap();
    assert_eq!(same[0], (rgb[0] as f32 - 127.5) / 127.5);
    assert_eq!(same[64 * 64 + 1], (rgb[4] as f32 - 127.5) / 127.5);
    // Wrong byte count or an empty image: errors.
    assert!(preprocess_rgb8(&rgb[1..], *w, *h, 16, ResizeFilter::Bilinear).is_err());
    assert!(preprocess_rgb8(&[], 0, 0, 16, ResizeFilter::Bilinear).is_err());
    assert!(preprocess_rgb8(rgb, *w, *h, 0, ResizeFilter::Bilinear).is_err());
}
