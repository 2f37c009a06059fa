//! Tokenizer parity with HF transformers' fast tokenizer on sample strings.

mod common;

use std::path::PathBuf;

use burn_ipa::models::tokenizer::Tokenizer;
use common::fixture;

#[test]
fn tokenizer_matches_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let expected = fixture("tokenizer/expected.json");
    assert_eq!(
        tok.bos_token_id,
        Some(expected["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        tok.eos_token_id,
        Some(expected["eos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        tok.pad_token_id,
        Some(expected["pad_token_id"].as_u64().unwrap() as u32)
    );
    let samples = expected["samples"].as_array().unwrap();
    assert!(samples.len() >= 8);
    for s in samples {
        let text = s["text"].as_str().unwrap();
        let ids = |k: &str| -> Vec<u32> {
            s[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids("ids"),
            "{text:?} with special tokens"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids("ids_no_special"),
            "{text:?} without"
        );
        assert_eq!(
            tok.decode(&ids("ids"), true).unwrap(),
            s["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
    }
}

#[test]
fn missing_tokenizer_is_an_error_naming_the_file() {
    let dir = common::temp_dir("no-tokenizer");
    let err = Tokenizer::from_dir(&dir).err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer.json"), b"{not json").unwrap();
    let err = Tokenizer::from_dir(&dir).err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
