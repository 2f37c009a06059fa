//! Text generation for decoders with a KV cache: greedy and beam search over left-padded
//! batches, stopping at end-of-sequence tokens or `max_new_tokens`.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::llama::{Decoder, ForwardOptions, KvCache};
use crate::projector::host::download_vec;
use crate::{Error, Result};

/// Settings of [`generate`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Beams; 1 is greedy decoding.
    pub num_beams: usize,
    /// Tokens that end a sequence (the model's `eos_token_id` by default).
    pub eos_token_ids: Vec<u32>,
    /// Token used to left-pad prompts of a batch.
    pub pad_token_id: u32,
    /// Beam scores are divided by `generated_length^length_penalty` (HF's default 1.0).
    pub length_penalty: f64,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, with the model's EOS and pad tokens.
    pub fn greedy<B: Backend>(model: &Decoder<B>, max_new_tokens: usize) -> Self {
        let c = &model.config;
        Self {
            max_new_tokens,
            num_beams: 1,
            eos_token_ids: c.eos_token_ids.clone(),
            pad_token_id: c
                .pad_token_id
                .or(c.eos_token_ids.first().copied())
                .unwrap_or(0),
            length_penalty: 1.0,
        }
    }

    /// Sets the number of beams.
    pub fn with_beams(mut self, num_beams: usize) -> Self {
        self.num_beams = num_beams;
        self
    }
}

/// Generates a continuation of each prompt; returns only the new tokens (without the EOS).
pub fn generate<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    generate_streaming(model, prompts, config, &mut |_, _| {})
}

/// [`generate`], handing tokens to `on_tokens(prompt index, tokens)` as they are decided:
/// with greedy decoding, each new token as soon as it is chosen; with beam search, the
/// winning continuation once the search ends (beams change until then). EOS is not passed.
pub fn generate_streaming<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    on_tokens: &mut dyn FnMut(usize, &[u32]),
) -> Result<Vec<Vec<u32>>> {
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::Config("cannot generate from an empty prompt".into()));
    }
    if config.num_beams == 0 {
        return Err(Error::Config("num_beams must be at least 1".into()));
    }
    if config.num_beams == 1 {
        greedy(model, prompts, config, on_tokens)
    } else {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let out = beam_search(model, p, config)?;
                on_tokens(i, &out);
                Ok(out)
            })
            .collect()
    }
}

fn ids_tensor<B: Backend>(ids: &[u32], rows: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(values, [rows, ids.len() / rows]), device)
}

/// Left-pads prompts; returns ids, mask and HF-style positions (counted over real tokens).
fn left_pad(prompts: &[Vec<u32>], pad: u32) -> (Vec<u32>, Vec<bool>, Vec<usize>, usize) {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut positions = Vec::new();
    for p in prompts {
        let pad_n = len - p.len();
        ids.extend(std::iter::repeat_n(pad, pad_n).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(false, pad_n).chain(std::iter::repeat_n(true, p.len())));
        // HF: cumsum(mask) − 1, with padded positions set to 1.
        positions.extend(std::iter::repeat_n(1, pad_n).chain(0..p.len()));
    }
    (ids, mask, positions, len)
}

fn greedy<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    on_tokens: &mut dyn FnMut(usize, &[u32]),
) -> Result<Vec<Vec<u32>>> {
    let device = model.model.embed_tokens.weight.device();
    let rows = prompts.len();
    let (ids, mask, positions, _) = left_pad(prompts, config.pad_token_id);
    let mut next_position: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut cache = KvCache::default();
    let options = ForwardOptions {
        attention_mask: Some(mask),
        position_ids: Some(positions),
    };
    let mut logits =
        model.forward_cached_last(ids_tensor::<B>(&ids, rows, &device), &options, &mut cache)?;
    let mut out = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    for _ in 0..config.max_new_tokens {
        let next: Vec<i64> = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| Error::State(format!("reading tokens: {e:?}")))?;
        let mut step = Vec::with_capacity(rows);
        for r in 0..rows {
            let token = next[r] as u32;
            if done[r] {
                step.push(config.pad_token_id);
                continue;
            }
            if config.eos_token_ids.contains(&token) {
                done[r] = true;
            } else {
                out[r].push(token);
                on_tokens(r, &[token]);
            }
            step.push(token);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let options = ForwardOptions {
            attention_mask: Some(vec![true; rows]),
            position_ids: Some(next_position.clone()),
        };
        next_position.iter_mut().for_each(|p| *p += 1);
        logits = model.forward_cached_last(
            ids_tensor::<B>(&step, rows, &device),
            &options,
            &mut cache,
        )?;
    }
    Ok(out)
}

/// Beam search for one prompt with `num_beams` rows in the cache. Scores are summed
/// log-probabilities; finished hypotheses are ranked by `score / length^length_penalty`.
fn beam_search<B: Backend>(
    model: &Decoder<B>,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<Vec<u32>> {
    let device = model.model.embed_tokens.weight.device();
    let k = config.num_beams;
    let mut cache = KvCache::default();
    let options = ForwardOptions {
        attention_mask: None,
        position_ids: None,
    };
    let logits =
        model.forward_cached_last(ids_tensor::<B>(prompt, 1, &device), &options, &mut cache)?;
    let mut log_probs = download_vec(log_softmax(logits, 1));
    let vocab = log_probs.len();
    // One live row at first; the cache is widened to k rows after the first step.
    let mut beams: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
    let normalised =
        |score: f64, len: usize| score / (len.max(1) as f64).powf(config.length_penalty);
    for step in 0..config.max_new_tokens {
        let mut candidates: Vec<(f64, usize, u32)> = Vec::with_capacity(beams.len() * vocab);
        for (b, (_, score)) in beams.iter().enumerate() {
            for t in 0..vocab {
                candidates.push((score + log_probs[b * vocab + t], b, t as u32));
            }
        }
        candidates.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut next: Vec<(Vec<u32>, f64)> = Vec::with_capacity(k);
        let mut parents = Vec::with_capacity(k);
        for &(score, b, token) in candidates.iter().take(2 * k) {
            if config.eos_token_ids.contains(&token) {
                finished.push((beams[b].0.clone(), score));
            } else if next.len() < k {
                let mut seq = beams[b].0.clone();
                seq.push(token);
                next.push((seq, score));
                parents.push(b);
            }
            if next.len() == k {
                break;
            }
        }
        // Stop when no running beam can still beat the worst of k finished ones.
        if finished.len() >= k {
            finished
                .sort_by(|x, y| normalised(y.1, y.0.len()).total_cmp(&normalised(x.1, x.0.len())));
            finished.truncate(k);
            let worst = finished
                .last()
                .map(|f| normalised(f.1, f.0.len()))
                .unwrap_or(f64::MIN);
            let best_running = next
                .first()
                .map(|n| normalised(n.1, n.0.len()))
                .unwrap_or(f64::MIN);
            if best_running <= worst {
                break;
            }
        }
        if next.is_empty() || step + 1 == config.max_new_tokens {
            beams = next;
            break;
        }
        cache.select_rows(&parents);
        let tokens: Vec<u32> = next
            .iter()
            .map(|(s, _)| *s.last().expect("beam has a token"))
            .collect();
        let position = prompt.len() + step;
        let options = ForwardOptions {
            attention_mask: Some(vec![true; tokens.len()]),
            position_ids: Some(vec![position; tokens.len()]),
        };
        let logits = model.forward_cached_last(
            ids_tensor::<B>(&tokens, tokens.len(), &device),
            &options,
            &mut cache,
        )?;
        log_probs = download_vec(log_softmax(logits, 1));
        beams = next;
    }
    finished.extend(beams);
    finished
        .into_iter()
        .max_by(|x, y| normalised(x.1, x.0.len()).total_cmp(&normalised(y.1, y.0.len())))
        .map(|(seq, _)| seq)
        .ok_or_else(|| Error::State("beam search produced no hypothesis".into()))
}
