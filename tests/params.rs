//! Trainable-parameter counts from config.json alone equal the paper's (Tables 1–2).

use burn_ipa::adapter::AdapterConfig;
use burn_ipa::models::params::{count_trainable, model_linears, read_model_config, Tower};

fn count(
    model: &str,
    rank: usize,
    targets: &[&str],
    towers: &[Tower],
    train_projector: bool,
    dora: bool,
) -> usize {
    let (value, file) = read_model_config(model).unwrap();
    let linears = model_linears(&value, &file).unwrap();
    let adapter = AdapterConfig::ipa(rank)
        .with_train_projector(train_projector)
        .with_dora(dora);
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    count_trainable(&linears, &targets, towers, &adapter)
        .unwrap()
        .trainable
}

/// Millions, rounded to one decimal as the paper prints them.
fn millions(n: usize) -> f64 {
    (n as f64 / 1e5).round() / 10.0
}

const LLM_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"];

#[test]
fn llm_counts_match_the_paper() {
    let text = &[Tower::Text];
    for (model, frozen, trained) in [
        ("llama-2-7b", 28.0, 56.1),
        ("llama-3-8b", 25.2, 56.6),
        ("qwen-2.5-7b", 24.3, 54.1),
    ] {
        assert_eq!(
            millions(count(model, 32, LLM_TARGETS, text, false, false)),
            frozen,
            "{model} Proj FT ✗"
        );
        assert_eq!(
            millions(count(model, 32, LLM_TARGETS, text, true, false)),
            trained,
            "{model} Proj FT ✓"
        );
    }
    // Exact value for one, so rounding cannot hide an off-by-a-layer error.
    assert_eq!(
        count("llama-2-7b", 32, LLM_TARGETS, text, false, false),
        32 * 32 * (3 * 4096 + 11008 + 4096)
    );
    // DoRA adds the magnitude vectors.
    assert_eq!(
        millions(count("llama-3-8b", 32, LLM_TARGETS, text, false, true)),
        26.0
    );
    assert_eq!(
        millions(count("llama-3-8b", 32, LLM_TARGETS, text, true, true)),
        57.4
    );
}

#[test]
fn gemma3_counts_include_the_vision_tower_as_the_paper_does() {
    let both = &[Tower::Text, Tower::Vision];
    assert_eq!(
        millions(count("gemma-3-4b", 32, LLM_TARGETS, both, false, false)),
        21.4
    );
    assert_eq!(
        millions(count("gemma-3-4b", 32, LLM_TARGETS, both, true, false)),
        46.6
    );
    // Text only: 34 layers of q (2048), k, v (1024 each), up (10240), down (2560) outputs.
    assert_eq!(
        count("gemma-3-4b", 32, LLM_TARGETS, &[Tower::Text], false, false),
        34 * 32 * (2048 + 1024 + 1024 + 10240 + 2560)
    );
}

#[test]
fn siglip_vision_qv_counts_match_the_paper() {
    let vision = &[Tower::Vision];
    assert_eq!(
        count(
            "siglip-2-base-patch16-224",
            8,
            &["q_proj", "v_proj"],
            vision,
            false,
            false
        ),
        147_456
    );
    assert_eq!(
        count(
            "siglip-2-base-patch16-224",
            8,
            &["q_proj", "v_proj"],
            vision,
            true,
            false
        ),
        294_912
    );
}

#[test]
fn unknown_models_and_targets_are_errors() {
    assert!(read_model_config("no-such-model")
        .unwrap_err()
        .to_string()
        .contains("llama-3-8b"));
    let (value, file) = read_model_config("llama-2-7b").unwrap();
    let linears = model_linears(&value, &file).unwrap();
    let err = count_trainable(
        &linears,
        &["qproj".into()],
        &[Tower::Text],
        &AdapterConfig::ipa(8),
    )
    .unwrap_err();
    assert!(err.to_string().contains("qproj"));
    // A rank larger than a layer's input width is refused, naming the layer.
    let err = count_trainable(
        &linears,
        &["q_proj".into()],
        &[Tower::Text],
        &AdapterConfig::ipa(5000),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("model.layers.0.self_attn.q_proj"),
        "{err}"
    );
}

#[test]
fn tiny_presets_parse() {
    // tiny-llama: 2 layers, hidden 64, 4 heads of 16, 2 kv heads, MLP 128.
    let n = count("tiny-llama", 4, LLM_TARGETS, &[Tower::Text], false, false);
    assert_eq!(n, 2 * 4 * (64 + 32 + 32 + 128 + 64));
    let n = count(
        "tiny-siglip",
        2,
        &["q_proj", "v_proj"],
        &[Tower::Vision],
        false,
        false,
    );
    assert_eq!(n, 2 * 2 * (64 + 64));
}
