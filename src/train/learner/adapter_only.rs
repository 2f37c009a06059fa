//! [`AdapterOnly`]: a model seen by burn-train through its adapters.
//!
//! burn-train's checkpointer saves `model.into_record()` — for a derived module that is every
//! parameter, the frozen base included (a 7B model at every checkpoint): a `Param` with
//! `require_grad = false` is recorded like any other. `AdapterOnly` implements
//! [`Module`] by hand: visiting, mapping, forking and moving go to the wrapped model, so the
//! optimizer, gradient accumulation and burn-store see every tensor, but its
//! [`Module::Record`] is an [`AdapterRecord`]: the tensors of each [`AdaptedLinear`]'s
//! adapter (projector, up-projection, DoRA magnitude), keyed by the layer's module path.
//!
//! The record keeps each tensor's parameter id, and loading it gives the parameters those ids
//! back: burn's optimizer state is keyed by parameter id, so a resumed process (whose fresh
//! parameters have new ids) finds its AdamW moments again.
//!
//! [`AdaptedLinear`]: crate::adapter::AdaptedLinear

use std::collections::BTreeMap;
use std::marker::PhantomData;

use burn::module::{AutodiffModule, Devices, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::step::StepOptions;

/// The three tensors an adapter may have, by the name of their parameter in
/// [`LowRankAdapter`](crate::adapter::LowRankAdapter).
const ADAPTER_PARAMS: [&str; 3] = ["projector", "up", "magnitude"];

/// The layer path and tensor name of an adapter parameter's module path
/// (`<layer>.adapter.<projector|up|magnitude>`).
fn split_adapter_path(path: &str) -> Option<(&str, &str)> {
    let (rest, name) = path.rsplit_once('.')?;
    if !ADAPTER_PARAMS.contains(&name) {
        return None;
    }
    let layer = rest.strip_suffix("adapter")?;
    let layer = match layer.strip_suffix('.') {
        Some(layer) => layer,
        None if layer.is_empty() => "",
        None => return None,
    };
    Some((layer, name))
}

/// One recorded tensor: its parameter id and its values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParamData {
    /// [`ParamId::serialize`] of the parameter.
    pub id: String,
    /// The values, in the record's precision.
    pub data: TensorData,
}

/// The adapter of one layer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerAdapter {
    /// Tensors by parameter name (`projector`, `up`, `magnitude`).
    pub tensors: BTreeMap<String, ParamData>,
}

/// The record of an [`AdapterOnly`] model: every adapter tensor by layer path, nothing else.
#[derive(Clone, Debug, Default)]
pub struct AdapterRecord<B: Backend> {
    /// Adapters by the module path of their layer.
    pub layers: BTreeMap<String, LayerAdapter>,
    _backend: PhantomData<fn() -> B>,
}

/// The serialised form of an [`AdapterRecord`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterRecordItem {
    /// Adapters by the module path of their layer.
    pub layers: BTreeMap<String, LayerAdapter>,
}

impl<B: Backend> AdapterRecord<B> {
    /// Tensors in the record.
    pub fn num_tensors(&self) -> usize {
        self.layers.values().map(|l| l.tensors.len()).sum()
    }

    /// Values in the record.
    pub fn num_values(&self) -> usize {
        self.layers
            .values()
            .flat_map(|l| l.tensors.values())
            .map(|t| t.data.num_elements())
            .sum()
    }
}

impl<B: Backend> Record<B> for AdapterRecord<B> {
    type Item<S: PrecisionSettings> = AdapterRecordItem;

    fn into_item<S: PrecisionSettings>(self) -> AdapterRecordItem {
        let mut layers = self.layers;
        for tensor in layers.values_mut().flat_map(|l| l.tensors.values_mut()) {
            tensor.data = tensor.data.clone().convert::<S::FloatElem>();
        }
        AdapterRecordItem { layers }
    }

    fn from_item<S: PrecisionSettings>(item: AdapterRecordItem, _device: &B::Device) -> Self {
        // The values stay on the host until `load_record` puts them on each parameter's
        // device in its dtype.
        Self {
            layers: item.layers,
            _backend: PhantomData,
        }
    }
}

/// A model whose burn records hold only its adapters: see the [module documentation](self).
///
/// `M` is any module with [`AdaptedLinear`](crate::adapter::AdaptedLinear) layers (this
/// crate's decoders and SigLIP, or a user's own model); it is reached as
/// [`inner`](Self::inner). On an autodiff backend, `AdapterOnly` is burn-train's
/// `TrainStep` (see [`StepBatch`](super::StepBatch)) and its inner module the
/// `InferenceStep` of the validation.
pub struct AdapterOnly<B: Backend, M> {
    /// The wrapped model.
    pub inner: M,
    /// How a training step treats the gradient (clipping, where errors go).
    pub options: StepOptions,
    _backend: PhantomData<fn() -> B>,
}

impl<B: Backend, M: Clone> Clone for AdapterOnly<B, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            options: self.options.clone(),
            _backend: PhantomData,
        }
    }
}

impl<B: Backend, M: std::fmt::Debug> std::fmt::Debug for AdapterOnly<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterOnly")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<B: Backend, M: Module<B>> std::fmt::Display for AdapterOnly<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut count = CountAdapters::default();
        self.inner.visit(&mut count);
        write!(
            f,
            "AdapterOnly: {} adapted layers, {} adapter values, {} values in all",
            count.layers.len(),
            count.values,
            self.inner.num_params()
        )
    }
}

impl<B: Backend, M: Module<B>> AdapterOnly<B, M> {
    /// Wraps `model`; training steps use `options`.
    pub fn new(model: M, options: StepOptions) -> Self {
        Self {
            inner: model,
            options,
            _backend: PhantomData,
        }
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.inner
    }

    /// Checks that `record` fits this model: the same adapted layers, each with the same
    /// tensors of the same shapes, and parameter ids that parse. `load_record` cannot return
    /// an error, so a checkpoint is checked with this first.
    pub fn check_record(&self, record: &AdapterRecord<B>) -> std::result::Result<(), String> {
        let mut shapes = CollectShapes::default();
        self.inner.visit(&mut shapes);
        for (layer, tensors) in &shapes.layers {
            let saved = record
                .layers
                .get(layer)
                .ok_or_else(|| format!("holds no adapter for the layer `{layer}`"))?;
            for (name, shape) in tensors {
                let data = saved
                    .tensors
                    .get(name)
                    .ok_or_else(|| format!("holds no `{name}` for the layer `{layer}`"))?;
                if data.data.shape.as_slice() != shape.as_slice() {
                    return Err(format!(
                        "holds `{layer}.adapter.{name}` of shape {:?}, the model's is {shape:?}",
                        data.data.shape
                    ));
                }
                if ParamId::try_deserialize(&data.id).is_none() {
                    return Err(format!(
                        "holds a bad parameter id for `{layer}.adapter.{name}`"
                    ));
                }
            }
            if let Some(extra) = saved.tensors.keys().find(|n| !tensors.contains_key(*n)) {
                return Err(format!(
                    "holds `{layer}.adapter.{extra}`, which the model's layer does not have"
                ));
            }
        }
        if let Some(extra) = record
            .layers
            .keys()
            .find(|l| !shapes.layers.contains_key(*l))
        {
            return Err(format!(
                "holds an adapter for `{extra}`, a layer the model does not adapt"
            ));
        }
        Ok(())
    }

    /// The parameter ids the record gives the adapter tensors, as the optimizer state keys
    /// them.
    pub fn record_ids(record: &AdapterRecord<B>) -> Vec<ParamId> {
        record
            .layers
            .values()
            .flat_map(|l| l.tensors.values())
            .filter_map(|t| ParamId::try_deserialize(&t.id))
            .collect()
    }
}

impl<B: Backend, M: Module<B>> Module<B> for AdapterOnly<B, M> {
    type Record = AdapterRecord<B>;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.inner.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            inner: self.inner.fork(device),
            ..self
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            inner: self.inner.to_device(device),
            ..self
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.inner.visit(visitor)
    }

    fn map<Mp: ModuleMapper<B>>(self, mapper: &mut Mp) -> Self {
        Self {
            inner: self.inner.map(mapper),
            ..self
        }
    }

    /// Loads the adapter tensors of `record` (with their parameter ids) into the adapted
    /// layers.
    ///
    /// # Panics
    /// If the record does not fit the model ([`AdapterOnly::check_record`] says why).
    fn load_record(self, record: Self::Record) -> Self {
        if let Err(why) = self.check_record(&record) {
            panic!("the adapter record does not fit the model: it {why}");
        }
        let mut loader = LoadAdapters {
            record: &record,
            path: Vec::new(),
        };
        Self {
            inner: self.inner.map(&mut loader),
            ..self
        }
    }

    fn into_record(self) -> Self::Record {
        let mut collect = CollectAdapters::default();
        self.inner.visit(&mut collect);
        AdapterRecord {
            layers: collect.layers,
            _backend: PhantomData,
        }
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AutodiffModule<B> for AdapterOnly<B, M> {
    type InnerModule = AdapterOnly<B::InnerBackend, M::InnerModule>;

    fn valid(&self) -> Self::InnerModule {
        AdapterOnly::new(self.inner.valid(), self.options.clone())
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        AdapterOnly::new(M::from_inner(module.inner), module.options)
    }
}

/// Keeps the module path of the parameter being visited.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    /// The current path, dotted.
    fn joined(&self) -> String {
        self.0.join(".")
    }
}

/// Collects every adapter tensor (id and values).
#[derive(Default)]
struct CollectAdapters {
    path: PathStack,
    layers: BTreeMap<String, LayerAdapter>,
}

impl<B: Backend> ModuleVisitor<B> for CollectAdapters {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.joined();
        if let Some((layer, name)) = split_adapter_path(&path) {
            let data = param.val().into_data();
            self.layers
                .entry(layer.to_string())
                .or_default()
                .tensors
                .insert(
                    name.to_string(),
                    ParamData {
                        id: param.id.serialize(),
                        data,
                    },
                );
        }
    }
}

/// The shape of every adapter tensor, by layer and name.
#[derive(Default)]
struct CollectShapes {
    path: PathStack,
    layers: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
}

impl<B: Backend> ModuleVisitor<B> for CollectShapes {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.joined();
        if let Some((layer, name)) = split_adapter_path(&path) {
            self.layers
                .entry(layer.to_string())
                .or_default()
                .insert(name.to_string(), param.lazy_shape().dims::<D>().to_vec());
        }
    }
}

/// Counts adapted layers and their values (for `Display`).
#[derive(Default)]
struct CountAdapters {
    path: PathStack,
    layers: std::collections::BTreeSet<String>,
    values: usize,
}

impl<B: Backend> ModuleVisitor<B> for CountAdapters {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.joined();
        if let Some((layer, _)) = split_adapter_path(&path) {
            self.layers.insert(layer.to_string());
            self.values += param.lazy_shape().num_elements();
        }
    }
}

/// Replaces each adapter parameter by the record's tensor and id, on the parameter's device,
/// in its dtype, keeping whether it requires gradients.
struct LoadAdapters<'a, B: Backend> {
    record: &'a AdapterRecord<B>,
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for LoadAdapters<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        let Some((layer, name)) = split_adapter_path(&path) else {
            return param;
        };
        // `check_record` ran first: every adapter tensor is there with its shape and id.
        let saved = &self.record.layers[layer].tensors[name];
        let id = ParamId::try_deserialize(&saved.id).expect("checked by check_record");
        let current = param.val();
        let tensor = Tensor::<B, D>::from_data(
            saved.data.clone().convert_dtype(current.dtype()),
            &current.device(),
        );
        param.transform_for_load(tensor, id)
    }
}

#[cfg(test)]
mod tests {
    use super::split_adapter_path;

    #[test]
    fn adapter_paths_split_into_layer_and_tensor() {
        assert_eq!(
            split_adapter_path("model.layers.0.self_attn.q_proj.adapter.up"),
            Some(("model.layers.0.self_attn.q_proj", "up"))
        );
        assert_eq!(
            split_adapter_path("adapter.projector"),
            Some(("", "projector"))
        );
        assert_eq!(split_adapter_path("q_proj.base.weight"), None);
        assert_eq!(split_adapter_path("my_adapter.up"), None);
    }
}
