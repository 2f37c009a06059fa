//! `ipa generate`: text from a model folder or GGUF file, optionally with an adapter, greedy
//! or by beam search, streamed as it is produced.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn_ipa::backend::BackendJob;
use burn_ipa::models::chat::{render_chat, ChatMessage};
use burn_ipa::models::generate::{generate_streaming, GenerationConfig};
use burn_ipa::models::llama::Decoder;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::pipelines::instruct::attach_saved_adapter;
use burn_ipa::{Error, Result};
use clap::Args;

/// Options of `ipa generate`; the struct is also the job.
#[derive(Args, Debug, Clone)]
pub struct GenerateCmd {
    #[command(flatten)]
    pub backend: super::BackendArgs,
    /// HF model folder or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder written by `ipa train` (none: the base model).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Prompt (repeat the flag for several).
    #[arg(long, required_unless_present = "prompts_file")]
    pub prompt: Vec<String>,
    /// A file of prompts, one per line (empty lines are skipped).
    #[arg(long, conflicts_with = "prompt")]
    pub prompts_file: Option<PathBuf>,
    /// Tokens generated at most per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Beams (1: greedy decoding, streamed token by token; more: beam search, printed when
    /// the search ends).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
}

impl GenerateCmd {
    /// Runs the command.
    pub fn run(self) -> Result<ExitCode> {
        let backend = self.backend.clone();
        backend.run(self)?;
        Ok(ExitCode::SUCCESS)
    }

    fn prompts(&self) -> Result<Vec<String>> {
        let Some(path) = &self.prompts_file else {
            return Ok(self.prompt.clone());
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let prompts: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if prompts.is_empty() {
            return Err(Error::file(path, "holds no prompt"));
        }
        Ok(prompts)
    }
}

/// Token ids of `prompt`, through the chat template when `chat`.
fn encode_prompt(tokenizer: &Tokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if !chat {
        return tokenizer.encode(prompt, true);
    }
    let template = tokenizer.chat_template.as_deref().ok_or_else(|| {
        Error::Config(
            "--chat: the model has no chat template (tokenizer.chat_template in a GGUF file, \
             chat_template in tokenizer_config.json)"
                .into(),
        )
    })?;
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let rendered = render_chat(
        template,
        &[ChatMessage::user(prompt)],
        true,
        &text(tokenizer.bos_token_id),
        &text(tokenizer.eos_token_id),
    )?;
    // The template writes the special tokens itself, as HF's apply_chat_template assumes.
    tokenizer.encode(&rendered, false)
}

impl BackendJob for GenerateCmd {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<()> {
        let prompts = self.prompts()?;
        let start = Instant::now();
        let tokenizer = Tokenizer::load(&self.model)?;
        let mut model: Decoder<B> = load_decoder(&self.model, &device)?;
        if let Some(adapter) = &self.adapter {
            attach_saved_adapter(&mut model, adapter)?;
        }
        eprintln!(
            "loaded {} in {:.1}s ({backend_name})",
            self.model.display(),
            start.elapsed().as_secs_f64()
        );
        let mut config =
            GenerationConfig::greedy(&model, self.max_new_tokens).with_beams(self.num_beams);
        if let Some(eos) = tokenizer.eos_token_id {
            if !config.eos_token_ids.contains(&eos) {
                config.eos_token_ids.push(eos);
            }
        }
        let (mut generated, mut seconds) = (0usize, 0f64);
        for (i, prompt) in prompts.iter().enumerate() {
            if prompts.len() > 1 {
                eprintln!("[{}/{}] {prompt}", i + 1, prompts.len());
            }
            let ids = encode_prompt(&tokenizer, prompt, self.chat)?;
            let mut stream = tokenizer.inner().decode_stream(true);
            let mut printed = String::new();
            let mut stdout = std::io::stdout();
            let t = Instant::now();
            let out = generate_streaming(&model, &[ids], &config, &mut |_, tokens| {
                for &token in tokens {
                    // The stream holds text back while it ends inside a UTF-8 sequence.
                    if let Ok(Some(text)) = stream.step(token) {
                        let _ = write!(stdout, "{text}");
                        let _ = stdout.flush();
                        printed.push_str(&text);
                    }
                }
            })?;
            seconds += t.elapsed().as_secs_f64();
            // Whatever the stream still held (an incomplete character at the end, say).
            let full = tokenizer.decode(&out[0], true)?;
            println!("{}", full.strip_prefix(printed.as_str()).unwrap_or(""));
            generated += out[0].len();
        }
        eprintln!(
            "{generated} tokens in {seconds:.2}s: {:.1} tokens/s",
            generated as f64 / seconds.max(1e-9)
        );
        Ok(())
    }
}
