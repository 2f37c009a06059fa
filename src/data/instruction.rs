//! Instruction data in the LLM-Adapters format: a JSON array of
//! `{"instruction", "input", "output", "answer"}`, as commonsense-170k and the test sets of
//! BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c and OBQA are distributed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::models::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructionExample {
    /// The task statement (for commonsense data, the whole question with its options).
    pub instruction: String,
    /// Optional context; empty in commonsense-170k.
    pub input: String,
    /// The target response, e.g. "the correct answer is solution1".
    pub output: String,
    /// The answer word, e.g. "solution1".
    pub answer: String,
}

/// Reads a JSON array of examples. Every element must be an object with string fields
/// `instruction` and `output`; `input` may be missing or empty; `answer` is required when
/// `require_answer` (test sets). Errors name the file, the element index and the field.
pub fn load_examples(path: &Path, require_answer: bool) -> Result<Vec<InstructionExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
    let items = value
        .as_array()
        .ok_or_else(|| Error::file(path, "expected a JSON array of examples"))?;
    if items.is_empty() {
        return Err(Error::file(path, "the dataset is empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str, required: bool| -> Result<String> {
                match item.get(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    None | Some(Value::Null) if !required => Ok(String::new()),
                    None | Some(Value::Null) => Err(Error::file(
                        path,
                        format!("example {i}: field `{name}` is missing"),
                    )),
                    Some(other) => Err(Error::file(
                        path,
                        format!("example {i}: field `{name}` must be a string, found {other}"),
                    )),
                }
            };
            if !item.is_object() {
                return Err(Error::file(
                    path,
                    format!("example {i}: expected an object"),
                ));
            }
            Ok(InstructionExample {
                instruction: field("instruction", true)?,
                input: field("input", false)?,
                output: field("output", !require_answer)?,
                answer: field("answer", require_answer)?,
            })
        })
        .collect()
}

/// How prompts are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// Byte for byte as LLM-Adapters' `finetune.py` (training) and `commonsense_evaluate.py`
    /// (evaluation) build them, indentation and trailing spaces included: the protocol the
    /// paper's numbers come from. Training and evaluation prompts differ in whitespace there.
    #[default]
    LlmAdapters,
    /// The same sections without the scripts' stray indentation.
    Clean,
}

const HEAD_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.";
const HEAD_PLAIN: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const INDENT: &str = "                ";

impl PromptStyle {
    /// The training text: prompt and response.
    pub fn training_text(&self, ex: &InstructionExample) -> String {
        match self {
            PromptStyle::Clean => format!("{}{}", self.prompt(ex), ex.output),
            PromptStyle::LlmAdapters => {
                let i = INDENT;
                if ex.input.is_empty() {
                    format!(
                        "{HEAD_PLAIN}  \n\n{i}### Instruction:\n{i}{}\n{i}\n{i}### Response:\n{i}{}",
                        ex.instruction, ex.output
                    )
                } else {
                    format!(
                        "{HEAD_INPUT} \n\n{i}### Instruction:\n{i}{}\n{i}\n{i}### Input:\n{i}{}\n{i}\n{i}### Response:\n{i}{}",
                        ex.instruction, ex.input, ex.output
                    )
                }
            }
        }
    }

    /// The evaluation prompt, ending where the response starts.
    pub fn prompt(&self, ex: &InstructionExample) -> String {
        match self {
            PromptStyle::Clean => {
                if ex.input.is_empty() {
                    format!(
                        "{HEAD_PLAIN}\n\n### Instruction:\n{}\n\n### Response:\n",
                        ex.instruction
                    )
                } else {
                    format!(
                        "{HEAD_INPUT}\n\n### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
                        ex.instruction, ex.input
                    )
                }
            }
            PromptStyle::LlmAdapters => {
                let i = INDENT;
                if ex.input.is_empty() {
                    format!(
                        "{HEAD_PLAIN} \n\n{i}### Instruction:\n{i}{}\n\n{i}### Response:\n{i}",
                        ex.instruction
                    )
                } else {
                    format!(
                        "{HEAD_INPUT}\n\n{i}### Instruction:\n{i}{}\n\n{i}### Input:\n{i}{}\n\n{i}### Response:\n{i}",
                        ex.instruction, ex.input
                    )
                }
            }
        }
    }

    /// The training prompt alone (the part masked out by `--mask-prompt`).
    pub fn training_prompt(&self, ex: &InstructionExample) -> String {
        let without_output = InstructionExample {
            output: String::new(),
            ..ex.clone()
        };
        self.training_text(&without_output)
    }
}

/// Label value ignored by the loss.
pub const IGNORE_INDEX: i64 = -100;

/// A tokenized training example.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedExample {
    /// Token ids, at most `cutoff` long.
    pub input_ids: Vec<u32>,
    /// Next-token labels aligned with `input_ids` (the loss shifts them): the ids themselves,
    /// or [`IGNORE_INDEX`] on the prompt when it is masked.
    pub labels: Vec<i64>,
}

/// Tokenizes as LLM-Adapters' `generate_and_tokenize_prompt`: truncate to `cutoff` tokens,
/// append EOS when there is room and it is not already last, labels equal to the ids, and with
/// `mask_prompt` (their `train_on_inputs = False`) the prompt's labels set to [`IGNORE_INDEX`].
pub fn tokenize_example(
    tokenizer: &Tokenizer,
    style: PromptStyle,
    ex: &InstructionExample,
    cutoff: usize,
    mask_prompt: bool,
) -> Result<TokenizedExample> {
    let encode = |text: &str| -> Result<Vec<u32>> {
        let mut ids = tokenizer.encode(text, true)?;
        ids.truncate(cutoff);
        if let Some(eos) = tokenizer.eos_token_id {
            if ids.last() != Some(&eos) && ids.len() < cutoff {
                ids.push(eos);
            }
        }
        Ok(ids)
    };
    let input_ids = encode(&style.training_text(ex))?;
    let mut labels: Vec<i64> = input_ids.iter().map(|&t| t as i64).collect();
    if mask_prompt {
        // As LLM-Adapters: the prompt is tokenized without EOS and its length masked.
        let mut prompt = tokenizer.encode(&style.training_prompt(ex), true)?;
        prompt.truncate(cutoff);
        for label in labels.iter_mut().take(prompt.len()) {
            *label = IGNORE_INDEX;
        }
    }
    Ok(TokenizedExample { input_ids, labels })
}
/// Tokenizes every example; an example that yields no tokens is an error naming its index.
pub fn tokenize_all(
    tokenizer: &Tokenizer,
    examples: &[InstructionExample],
    style: PromptStyle,
    cutoff: usize,
    mask_prompt: bool,
) -> Result<Vec<TokenizedExample>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let t = tokenize_example(tokenizer, style, ex, cutoff, mask_prompt)?;
            if t.input_ids.is_empty() {
                return Err(Error::Config(format!("example {i} has no tokens")));
            }
            Ok(t)
        })
        .collect()
}

/// Checks that every token id fits the model's vocabulary (a tokenizer from another model
/// would otherwise fail deep inside the embedding).
pub fn check_vocabulary(examples: &[TokenizedExample], vocab_size: usize) -> Result<()> {
    for (i, ex) in examples.iter().enumerate() {
        if let Some(&id) = ex.input_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Config(format!(
                "example {i}: token id {id} is outside the model's vocabulary of {vocab_size} \
                 (is the tokenizer the model's own?)"
            )));
        }
    }
    Ok(())
}

/// Writes a task set in the LLM-Adapters layout: `dir/train.json` and
/// `dir/dataset/<name>/test.json` per test set, each written atomically.
pub fn write_dataset(
    dir: &Path,
    train: &[InstructionExample],
    tests: &[(String, Vec<InstructionExample>)],
) -> Result<()> {
    let json = |v: &[InstructionExample]| {
        serde_json::to_vec_pretty(v).map_err(|e| Error::State(format!("serialising examples: {e}")))
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    crate::adapter::write_atomic(&dir.join("train.json"), &json(train)?)?;
    for (name, set) in tests {
        let task_dir = dir.join("dataset").join(name);
        std::fs::create_dir_all(&task_dir).map_err(|e| Error::file(&task_dir, e))?;
        crate::adapter::write_atomic(&task_dir.join("test.json"), &json(set)?)?;
    }
    Ok(())
}
