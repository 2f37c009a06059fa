//! The decoder-only transformer of Llama-2/3, Qwen-2.5 and Gemma-3 (text), as HF transformers
//! computes it. The variant comes from [`DecoderConfig`]; module and parameter names mirror the
//! HF checkpoints (`model.layers.N.self_attn.q_proj`, ...), so weights load by name.
//!
//! Every linear layer is an [`AdaptedLinear`], so adapters can go on any of them.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::activation::{gelu_approximate, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};

use super::config::{DecoderConfig, DecoderFamily, LayerKind};
use super::norm::RmsNorm;
use super::rope::{apply_rope, inverse_frequencies, rope_tables};
use crate::adapter::{AdaptedLinear, AdaptedLinearConfig, AdapterConfig, ProjectorInit};
use crate::projector::host::upload_vec;
use crate::{Error, Result};

/// A place in the network whose input a projector fit reads. Targets that read the same input
/// share one site: q/k/v read [`SiteKind::Attention`], gate/up read [`SiteKind::Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// Layer index.
    pub layer: usize,
    /// Which input of the layer.
    pub kind: SiteKind,
}

/// The distinct inputs of a decoder layer's linear maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    /// The normed hidden state read by q_proj, k_proj and v_proj.
    Attention,
    /// The attention output read by o_proj.
    AttentionOutput,
    /// The normed hidden state read by gate_proj and up_proj.
    Mlp,
    /// The gated activation read by down_proj.
    MlpDown,
}

impl SiteKind {
    /// The HF module names of the linears that read this input.
    pub fn targets(&self) -> &'static [&'static str] {
        match self {
            SiteKind::Attention => &["q_proj", "k_proj", "v_proj"],
            SiteKind::AttentionOutput => &["o_proj"],
            SiteKind::Mlp => &["gate_proj", "up_proj"],
            SiteKind::MlpDown => &["down_proj"],
        }
    }
}

/// Receives `(site, rows [n, d], keep [n])` for each site during a tapping forward pass.
pub type Tap<'a, B> = dyn FnMut(Site, Tensor<B, 2>, &[bool]) + 'a;

/// Self-attention with rotary positions, GQA and optional q/k norms (Gemma-3).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub q_proj: AdaptedLinear<B>,
    /// Key projection.
    pub k_proj: AdaptedLinear<B>,
    /// Value projection.
    pub v_proj: AdaptedLinear<B>,
    /// Output projection.
    pub o_proj: AdaptedLinear<B>,
    /// Per-head query norm (Gemma-3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head key norm (Gemma-3).
    pub k_norm: Option<RmsNorm<B>>,
}

/// The gated MLP: `down(act(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: AdaptedLinear<B>,
    /// Up projection.
    pub up_proj: AdaptedLinear<B>,
    /// Down projection.
    pub down_proj: AdaptedLinear<B>,
}

/// One decoder layer. Llama/Qwen use `input_layernorm` before attention and
/// `post_attention_layernorm` before the MLP; Gemma-3 normalises around both blocks with four
/// norms (`post_attention_layernorm` is applied to the attention output there).
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Attention.
    pub self_attn: Attention<B>,
    /// Llama: norm before the MLP; Gemma-3: norm of the attention output.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma-3: norm before the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma-3: norm of the MLP output.
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    /// The MLP.
    pub mlp: Mlp<B>,
}

/// Embeddings, layers and final norm (HF's `model.` prefix).
#[derive(Module, Debug)]
pub struct DecoderBody<B: Backend> {
    /// Token embeddings `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// The layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
}

/// A causal language model: [`DecoderBody`] plus an output head (tied to the embeddings when
/// the config says so).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// The transformer.
    pub model: DecoderBody<B>,
    /// The untied output head.
    pub lm_head: Option<AdaptedLinear<B>>,
    /// The configuration.
    #[module(skip)]
    pub config: DecoderConfig,
}

/// Past keys and values of every layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Key padding of every cached position, row-major `[batch, cached]`.
    key_mask: Vec<bool>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the batch rows in `rows` (beam search reorders beams).
    pub fn select_rows(&mut self, rows: &[usize]) {
        let old_batch = self.key_mask.len().checked_div(self.len).unwrap_or(0);
        if old_batch == 0 {
            return;
        }
        let device = self.layers.first().map(|(k, _)| k.device());
        if let Some(device) = device {
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [rows.len()],
                ),
                &device,
            );
            for (k, v) in self.layers.iter_mut() {
                *k = k.clone().select(0, idx.clone());
                *v = v.clone().select(0, idx.clone());
            }
        }
        let mut mask = Vec::with_capacity(rows.len() * self.len);
        for &r in rows {
            mask.extend_from_slice(&self.key_mask[r * self.len..(r + 1) * self.len]);
        }
        self.key_mask = mask;
    }
}

/// Per-call tensors shared by all layers: rotary tables and additive attention masks.
struct StepContext<B: Backend> {
    rope_global: RopeTables<B>,
    rope_local: RopeTables<B>,
    mask_full: Tensor<B, 4>,
    mask_sliding: Tensor<B, 4>,
    query_keep: Vec<bool>,
}

/// Rotary tables at the full shapes of the queries and keys, `[batch, seq, heads, head_dim]`:
/// elementwise products of equal shapes run on the CPU backends' contiguous fast path, where a
/// broadcast table goes through strided indexing (the tables are the size of `q` and `k`).
struct RopeTables<B: Backend> {
    cos_q: Tensor<B, 4>,
    sin_q: Tensor<B, 4>,
    cos_k: Tensor<B, 4>,
    sin_k: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    fn new(
        cos: &[f64],
        sin: &[f64],
        shape: [usize; 2],
        heads: [usize; 2],
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let [batch, seq] = shape;
        let tile = |table: &[f64], h: usize| {
            let mut out = Vec::with_capacity(batch * seq * h * head_dim);
            for row in table.chunks(head_dim) {
                for _ in 0..h {
                    out.extend_from_slice(row);
                }
            }
            upload_vec::<B, 4>(out, [batch, seq, h, head_dim], device)
        };
        let [nh, nkv] = heads;
        Self {
            cos_q: tile(cos, nh),
            sin_q: tile(sin, nh),
            cos_k: tile(cos, nkv),
            sin_k: tile(sin, nkv),
        }
    }
}

/// Additive mask value for excluded keys: finite, so fully masked rows (left padding) stay
/// finite instead of turning into NaN.
const MASKED: f64 = -1e30;

impl<B: Backend> Attention<B> {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: Tensor<B, 3>,
        config: &DecoderConfig,
        kind: LayerKind,
        ctx: &StepContext<B>,
        cache: Option<&mut (Tensor<B, 4>, Tensor<B, 4>)>,
        tap_output: Option<&mut Tap<'_, B>>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.shape().dims();
        let (nh, nkv, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        // Heads are split as `[batch, seq, heads, head_dim]`, the linears' own layout, so the
        // norms and rotary embedding run on contiguous data (and their backward on contiguous
        // gradients). The attention matmuls then read them through permuted views: the CPU
        // backends' matmul takes any strides, while a copy of a permuted 4-D view (and an
        // elementwise op on one) goes through their slow strided path.
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, s, heads, hd]);
        let mut q = split(self.q_proj.forward(x.clone()), nh);
        let mut k = split(self.k_proj.forward(x.clone()), nkv);
        let v = split(self.v_proj.forward(x), nkv);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let (rope, mask) = match kind {
            LayerKind::Full => (&ctx.rope_global, &ctx.mask_full),
            LayerKind::Sliding => (&ctx.rope_local, &ctx.mask_sliding),
        };
        let q = apply_rope(q, &rope.cos_q, &rope.sin_q);
        let k = apply_rope(k, &rope.cos_k, &rope.sin_k);
        let rep = nh / nkv;
        // Grouped-query attention without repeating K and V: queries as `[b, nkv, rep, s, hd]`,
        // keys and values as `[b, nkv, 1, total, hd]`, the matmul broadcasting over the `rep`
        // query heads of a KV head (HF's `repeat_kv` copies K and V `rep` times, and its
        // backward sums the copies; here the broadcast's backward sums).
        let q = q.reshape([b, s, nkv, rep, hd]).permute([0, 2, 3, 1, 4]);
        let kv_view = |t: Tensor<B, 4>| t.reshape([b, s, nkv, 1, hd]).permute([0, 2, 3, 1, 4]);
        let (k, v) = match cache {
            Some(entry) => {
                // The cache keeps `[b, nkv, total, hd]`, contiguous (`cat` copies).
                let append = |cached: &Tensor<B, 4>, new: Tensor<B, 4>| {
                    let new = new.swap_dims(1, 2);
                    if cached.shape().dims::<4>()[2] == 0 {
                        new
                    } else {
                        Tensor::cat(vec![cached.clone(), new], 2)
                    }
                };
                let k_all = append(&entry.0, k);
                let v_all = append(&entry.1, v);
                *entry = (k_all.clone(), v_all.clone());
                let total = k_all.shape().dims::<4>()[2];
                (
                    k_all.reshape([b, nkv, 1, total, hd]),
                    v_all.reshape([b, nkv, 1, total, hd]),
                )
            }
            None => (kv_view(k), kv_view(v)),
        };
        let total = k.shape().dims::<5>()[3];
        let dtype = q.dtype();
        // Scores and softmax in f32, as HF's eager attention does for half types.
        let scores = q
            .cast(FloatDType::F32)
            .matmul(k.cast(FloatDType::F32).swap_dims(3, 4))
            * config.attention_scale();
        let scores = if mask.dims()[0] == 1 {
            // One mask for all rows and heads: a shared-row broadcast over `[b·nh, s·total]`.
            (scores.reshape([b * nh, s * total]) + mask.clone().reshape([1, s * total]))
                .reshape([b, nh, s, total])
        } else {
            scores.reshape([b, nh, s, total]) + mask.clone()
        };
        let probs = softmax(scores, 3)
            .cast(dtype)
            .reshape([b, nkv, rep, s, total]);
        // `[b, nkv, rep, s, hd]` back to the linears' `[b, s, nh·hd]`: the one copy.
        let out = probs
            .matmul(v)
            .permute([0, 3, 1, 2, 4])
            .reshape([b, s, nh * hd]);
        if let Some(tap) = tap_output {
            tap(
                Site {
                    layer,
                    kind: SiteKind::AttentionOutput,
                },
                out.clone().reshape([b * s, nh * hd]),
                &ctx.query_keep,
            );
        }
        self.o_proj.forward(out)
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        family: DecoderFamily,
        tap: Option<(&mut Tap<'_, B>, usize, &[bool])>,
    ) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        let act = match family {
            DecoderFamily::Gemma3 => gelu_approximate(gate),
            _ => silu(gate),
        };
        let hidden = act * self.up_proj.forward(x);
        if let Some((tap, layer, keep)) = tap {
            let [b, s, d] = hidden.shape().dims();
            tap(
                Site {
                    layer,
                    kind: SiteKind::MlpDown,
                },
                hidden.clone().reshape([b * s, d]),
                keep,
            );
        }
        self.down_proj.forward(hidden)
    }
}

/// What a forward pass is given besides token ids.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Padding mask, row-major `[batch, seq]`, true = real token. `None`: no padding.
    pub attention_mask: Option<Vec<bool>>,
    /// Rotary positions, row-major `[batch, seq]`. `None`: `past..past+seq` for every row, as
    /// HF's forward does (generation passes positions counted over real tokens instead).
    pub position_ids: Option<Vec<usize>>,
}

impl<B: Backend> Decoder<B> {
    /// A randomly initialised decoder of the given shape (weights are then loaded by name).
    pub fn init(config: &DecoderConfig, device: &B::Device) -> Self {
        let d = config.hidden_size;
        let (nh, nkv, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let gemma = config.family == DecoderFamily::Gemma3;
        let offset = if gemma { 1.0 } else { 0.0 };
        let norm = |width: usize| RmsNorm::new(width, offset, config.rms_norm_eps, device);
        let linear = |i: usize, o: usize, bias: bool| {
            AdaptedLinearConfig::new(i, o)
                .with_bias(bias)
                .init_lazy(device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(d),
                self_attn: Attention {
                    q_proj: linear(d, nh * hd, config.attention_bias),
                    k_proj: linear(d, nkv * hd, config.attention_bias),
                    v_proj: linear(d, nkv * hd, config.attention_bias),
                    o_proj: linear(nh * hd, d, false),
                    q_norm: gemma.then(|| norm(hd)),
                    k_norm: gemma.then(|| norm(hd)),
                },
                post_attention_layernorm: norm(d),
                pre_feedforward_layernorm: gemma.then(|| norm(d)),
                post_feedforward_layernorm: gemma.then(|| norm(d)),
                mlp: Mlp {
                    gate_proj: linear(d, config.intermediate_size, false),
                    up_proj: linear(d, config.intermediate_size, false),
                    down_proj: linear(config.intermediate_size, d, false),
                },
            })
            .collect();
        let embed_tokens = EmbeddingConfig::new(config.vocab_size, d).init(device);
        let embed_tokens = Embedding {
            weight: embed_tokens.weight.set_require_grad(false),
        };
        Self {
            model: DecoderBody {
                embed_tokens,
                layers,
                norm: norm(d),
            },
            lm_head: (!config.tie_word_embeddings).then(|| linear(d, config.vocab_size, false)),
            config: config.clone(),
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
    ) -> Result<Tensor<B, 3>> {
        let hidden = self.run(input_ids, options, None, None)?;
        Ok(self.logits(hidden))
    }

    /// The final hidden states `[batch, seq, hidden]` (after the last norm, before the head).
    pub fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
    ) -> Result<Tensor<B, 3>> {
        self.run(input_ids, options, None, None)
    }

    /// The output head as a `[vocab, hidden]` matrix (logits are `hidden · Wᵀ`) when it is a
    /// plain frozen matrix: the tied embedding, or an untied head with no bias, no adapter and
    /// no gradient. `None` when the head trains or does more than a matmul.
    pub fn frozen_head(&self) -> Option<Tensor<B, 2>> {
        // `is_require_grad` speaks of leaves: ask before transposing.
        let frozen = |w: Tensor<B, 2>| (!w.is_require_grad()).then_some(w);
        match &self.lm_head {
            None => frozen(self.model.embed_tokens.weight.val()),
            Some(head) => frozen(head.plain_weight()?).map(|w| w.transpose()),
        }
    }

    /// Like [`forward`](Self::forward), reading and extending a KV cache.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let hidden = self.run(input_ids, options, Some(cache), None)?;
        Ok(self.logits(hidden))
    }

    /// The next-token logits `[batch, vocab]` of the last position only, reading and extending
    /// a KV cache: what decoding needs. The head (the largest matmul of a small model with a
    /// large vocabulary) runs on one position per row instead of the whole prompt.
    pub fn forward_cached_last(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>> {
        let hidden = self.run(input_ids, options, Some(cache), None)?;
        let [b, s, d] = hidden.shape().dims();
        let last = hidden.slice([0..b, s - 1..s, 0..d]);
        let logits = self.logits(last);
        let vocab = logits.shape().dims::<3>()[2];
        Ok(logits.reshape([b, vocab]))
    }

    /// The final hidden states `[batch, seq, hidden]`, reporting the input of every distinct
    /// site to `tap` (with the padding mask) on the way.
    pub fn forward_tap(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
        tap: &mut Tap<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        self.run(input_ids, options, None, Some(tap))
    }

    /// Output head on hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // Tied head: the embedding matrix [vocab, d] multiplies from the left, in its
                // stored layout; `hidden · wᵀ` would copy the transposed matrix on each call.
                let [b, s, d] = hidden.shape().dims();
                let w = self.model.embed_tokens.weight.val();
                let vocab = w.shape().dims::<2>()[0];
                let h = hidden.reshape([b * s, d]).transpose();
                w.matmul(h).transpose().reshape([b, s, vocab])
            }
        }
    }

    fn context(
        &self,
        batch: usize,
        seq: usize,
        past: usize,
        past_mask: &[bool],
        options: &ForwardOptions,
        device: &B::Device,
    ) -> Result<StepContext<B>> {
        let c = &self.config;
        let query_keep = match &options.attention_mask {
            Some(m) if m.len() != batch * seq => {
                return Err(Error::shape("attention_mask", [batch, seq], [m.len()]))
            }
            Some(m) => m.clone(),
            None => vec![true; batch * seq],
        };
        let positions: Vec<usize> = match &options.position_ids {
            Some(p) if p.len() != batch * seq => {
                return Err(Error::shape("position_ids", [batch, seq], [p.len()]))
            }
            Some(p) => p.clone(),
            None => (0..batch).flat_map(|_| past..past + seq).collect(),
        };
        if let Some(&max) = positions.iter().max() {
            if max >= c.max_position_embeddings {
                return Err(Error::Config(format!(
                    "position {max} exceeds the model's max_position_embeddings = {}",
                    c.max_position_embeddings
                )));
            }
        }
        let hd = c.head_dim;
        let heads = [c.num_attention_heads, c.num_key_value_heads];
        let upload4 = |v: Vec<f64>, shape: [usize; 4]| upload_vec::<B, 4>(v, shape, device);
        let (cg, sg) = rope_tables(&inverse_frequencies(hd, &c.rope), &positions, hd);
        let local = c.local_rope.as_ref().unwrap_or(&c.rope);
        let (cl, sl) = rope_tables(&inverse_frequencies(hd, local), &positions, hd);
        // Keys: the cached positions then this call's; key j of row b is visible to query i
        // when j ≤ past + i, it is a real token and, for sliding layers, past + i − j < window.
        let total = past + seq;
        let key_keep: Vec<bool> = (0..batch)
            .flat_map(|b| {
                let cached = &past_mask[b * past..(b + 1) * past];
                cached
                    .iter()
                    .copied()
                    .chain(query_keep[b * seq..(b + 1) * seq].iter().copied())
                    .collect::<Vec<_>>()
            })
            .collect();
        let window = c.sliding_window.unwrap_or(usize::MAX);
        // With no cache and every row's padding at its end (training, fitting, scoring), the
        // causal mask alone gives every real query the same keys as the padding-aware one (its
        // keys all precede the padding); only padding queries, whose outputs nothing reads,
        // see more. One `[1, 1, seq, seq]` mask then serves the whole batch, and adding it to
        // the scores is a shared-row broadcast, which the CPU backends run as a SIMD loop
        // where a per-row `[batch, 1, ..]` mask takes their strided path.
        let right_padded = |row: &[bool]| row.iter().skip_while(|&&k| k).all(|&k| !k);
        let shared = past == 0 && query_keep.chunks(seq.max(1)).all(right_padded);
        let rows = if shared { 1 } else { batch };
        let mut full = Vec::with_capacity(rows * seq * total);
        let mut sliding = Vec::with_capacity(rows * seq * total);
        let key_keep = if shared { vec![true; total] } else { key_keep };
        for b in 0..rows {
            for i in 0..seq {
                let qi = past + i;
                for j in 0..total {
                    let visible = j <= qi && key_keep[b * total + j];
                    full.push(if visible { 0.0 } else { MASKED });
                    sliding.push(if visible && qi - j < window {
                        0.0
                    } else {
                        MASKED
                    });
                }
            }
        }
        Ok(StepContext {
            rope_global: RopeTables::new(&cg, &sg, [batch, seq], heads, hd, device),
            rope_local: RopeTables::new(&cl, &sl, [batch, seq], heads, hd, device),
            mask_full: upload4(full, [rows, 1, seq, total]).cast(FloatDType::F32),
            mask_sliding: upload4(sliding, [rows, 1, seq, total]).cast(FloatDType::F32),
            query_keep,
        })
    }

    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions,
        mut cache: Option<&mut KvCache<B>>,
        mut tap: Option<&mut Tap<'_, B>>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input_ids.shape().dims();
        let device = input_ids.device();
        let c = &self.config;
        let (past, past_mask) = match cache.as_deref() {
            Some(kv) if kv.len > 0 => {
                if kv.key_mask.len() != batch * kv.len {
                    return Err(Error::State(format!(
                        "KV cache holds {} rows, the input has {batch}",
                        kv.key_mask.len() / kv.len
                    )));
                }
                (kv.len, kv.key_mask.clone())
            }
            _ => (0, Vec::new()),
        };
        let ctx = self.context(batch, seq, past, &past_mask, options, &device)?;
        let mut h = self.model.embed_tokens.forward(input_ids);
        if c.family == DecoderFamily::Gemma3 {
            // HF multiplies by √hidden rounded to the activation type.
            h = h * (c.hidden_size as f64).sqrt();
        }
        if let Some(kv) = cache.as_deref_mut() {
            if kv.layers.is_empty() {
                let empty =
                    Tensor::<B, 4>::zeros([batch, c.num_key_value_heads, 0, c.head_dim], &device);
                kv.layers = vec![(empty.clone(), empty); c.num_hidden_layers];
            }
        }
        let d = c.hidden_size;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let kind = c.layer_types[i];
            let x = layer.input_layernorm.forward(h.clone());
            if let Some(tap) = tap.as_deref_mut() {
                tap(
                    Site {
                        layer: i,
                        kind: SiteKind::Attention,
                    },
                    x.clone().reshape([batch * seq, d]),
                    &ctx.query_keep,
                );
            }
            let entry = cache.as_deref_mut().map(|kv| &mut kv.layers[i]);
            let attn = layer
                .self_attn
                .forward(x, c, kind, &ctx, entry, tap.as_deref_mut(), i);
            let keep = ctx.query_keep.clone();
            match c.family {
                DecoderFamily::Gemma3 => {
                    h = h + layer.post_attention_layernorm.forward(attn);
                    let pre = layer
                        .pre_feedforward_layernorm
                        .as_ref()
                        .expect("gemma3 layer has pre_feedforward_layernorm");
                    let post = layer
                        .post_feedforward_layernorm
                        .as_ref()
                        .expect("gemma3 layer has post_feedforward_layernorm");
                    let x = pre.forward(h.clone());
                    if let Some(tap) = tap.as_deref_mut() {
                        tap(
                            Site {
                                layer: i,
                                kind: SiteKind::Mlp,
                            },
                            x.clone().reshape([batch * seq, d]),
                            &keep,
                        );
                    }
                    let m = layer.mlp.forward(
                        x,
                        c.family,
                        tap.as_deref_mut().map(|t| (t, i, keep.as_slice())),
                    );
                    h = h + post.forward(m);
                }
                _ => {
                    h = h + attn;
                    let x = layer.post_attention_layernorm.forward(h.clone());
                    if let Some(tap) = tap.as_deref_mut() {
                        tap(
                            Site {
                                layer: i,
                                kind: SiteKind::Mlp,
                            },
                            x.clone().reshape([batch * seq, d]),
                            &keep,
                        );
                    }
                    h = h + layer.mlp.forward(
                        x,
                        c.family,
                        tap.as_deref_mut().map(|t| (t, i, keep.as_slice())),
                    );
                }
            }
        }
        if let Some(kv) = cache {
            let mut mask = Vec::with_capacity(batch * (past + seq));
            for b in 0..batch {
                mask.extend_from_slice(&past_mask[b * past..(b + 1) * past]);
                mask.extend_from_slice(&ctx.query_keep[b * seq..(b + 1) * seq]);
            }
            kv.key_mask = mask;
            kv.len = past + seq;
        }
        Ok(self.model.norm.forward(h))
    }

    /// Attaches an adapter to every linear named in `targets` (HF names: `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`), in all layers or only in
    /// `layers`. `init` gives each layer's projector from its path. Returns the paths adapted.
    pub fn attach_adapters(
        &mut self,
        targets: &[String],
        layers: Option<&[usize]>,
        config: &AdapterConfig,
        mut init: impl FnMut(&str) -> ProjectorInit<B>,
    ) -> Result<Vec<String>> {
        const KNOWN: [&str; 7] = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        if let Some(bad) = targets.iter().find(|t| !KNOWN.contains(&t.as_str())) {
            return Err(Error::Config(format!(
                "unknown target module `{bad}` (expected one of {KNOWN:?})"
            )));
        }
        if let Some(bad) =
            layers.and_then(|l| l.iter().find(|&&i| i >= self.config.num_hidden_layers))
        {
            return Err(Error::Config(format!(
                "layer {bad} does not exist (the model has {} layers)",
                self.config.num_hidden_layers
            )));
        }
        let mut adapted = Vec::new();
        for (path, linear) in self.linears_mut() {
            let name = path.rsplit('.').next().unwrap_or_default();
            let layer = path.split('.').nth(2).and_then(|s| s.parse::<usize>().ok());
            let in_layers = match (layers, layer) {
                (Some(list), Some(i)) => list.contains(&i),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if in_layers && targets.iter().any(|t| t == name) {
                let projector = init(&path);
                *linear = linear
                    .clone()
                    .attach(config, projector)
                    .map_err(|e| e.in_context(&path))?;
                adapted.push(path);
            }
        }
        Ok(adapted)
    }

    /// Every adapted linear with its HF-style path (`model.layers.3.self_attn.q_proj`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut layer.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        if let Some(head) = self.lm_head.as_mut() {
            out.push(("lm_head".to_string(), head));
        }
        out
    }
}
