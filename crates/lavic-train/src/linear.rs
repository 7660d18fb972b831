//! Trainable, unmerged LoRA on a frozen Linear layer, as PEFT's `lora.Linear`:
//! `y = x W^T + b + scale * dropout(x) A^T B^T`, `scale = alpha / r` (or `alpha / sqrt(r)` with
//! rsLoRA), A initialised as PEFT (`kaiming_uniform_(a = sqrt(5))`, i.e.
//! `U(-1/sqrt(in), 1/sqrt(in))`), B zeros. The base weight stays a plain tensor (no gradient is
//! kept for it); A and B are f32 [`Var`]s whatever the compute dtype.
//!
//! [`Params`] holds every trainable tensor by its PEFT name, and [`Builder`] creates the layers
//! of a model from lavic-model's checkpoint access, adding LoRA where a [`LoraSpec`] says.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{DType, Device, Module, Tensor, Var};
use lavic_model::weights::Weights;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spec::LoraSpec;

/// Forward-pass state: whether dropout is active, and the generator that draws its masks.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Training mode (dropout on). False gives the deterministic eval forward.
    pub train: bool,
    /// Draws dropout masks, in a fixed order, so a run is reproducible and resumable.
    pub rng: Rng,
}

impl Ctx {
    /// Eval mode: no dropout.
    pub fn eval() -> Self {
        Self { train: false, rng: Rng::new(0) }
    }
}

/// Inverted dropout (`nn.Dropout` in training mode): each element kept with probability `1 - p`
/// and scaled by `1 / (1 - p)`.
pub fn dropout(xs: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let n = xs.elem_count();
    let mask: Vec<f32> = (0..n).map(|_| if rng.uniform() < p { 0.0 } else { keep as f32 }).collect();
    let mask = Tensor::from_vec(mask, xs.dims(), xs.device())?.to_dtype(xs.dtype())?;
    Ok((xs * mask)?)
}

/// The trainable low-rank pair of one layer.
#[derive(Debug, Clone)]
pub struct Lora {
    /// Down projection, `r x in`.
    pub a: Var,
    /// Up projection, `out x r`.
    pub b: Var,
    /// `alpha / r` or `alpha / sqrt(r)`.
    pub scale: f64,
    /// Dropout probability on the LoRA input.
    pub dropout: f64,
}

/// A Linear layer with a frozen base and optional trainable LoRA.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// Canonical module name.
    pub name: String,
    base: candle_nn::Linear,
    lora: Option<Lora>,
}

impl LoraLinear {
    /// A layer from its base weight `out x in`, bias and LoRA.
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>, lora: Option<Lora>) -> Self {
        Self { name: name.into(), base: candle_nn::Linear::new(weight, bias), lora }
    }

    /// The base weight.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// Its LoRA, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// `x W^T + b + scale * dropout(x) A^T B^T` (LoRA branch in f32, added in the input dtype).
    pub fn forward(&self, xs: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let out = self.base.forward(xs)?;
        let Some(l) = &self.lora else { return Ok(out) };
        let dtype = xs.dtype();
        let mut x = xs.to_dtype(DType::F32)?;
        if ctx.train {
            x = dropout(&x, l.dropout, &mut ctx.rng)?;
        }
        let low = candle_nn::Linear::new(l.a.as_tensor().clone(), None).forward(&x)?;
        let up = candle_nn::Linear::new(l.b.as_tensor().clone(), None).forward(&low)?;
        Ok((out + (up * l.scale)?.to_dtype(dtype)?)?)
    }
}

/// Every trainable tensor of a model, by the name PEFT saves it under (without
/// `base_model.model.`): `{module}.lora_A.weight`, `{module}.lora_B.weight`, and the tensors of
/// `modules_to_save` modules by their own names. Sorted, so clipping and saving are in a fixed
/// order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// The tensors.
    pub vars: BTreeMap<String, Var>,
}

impl Params {
    /// Number of trainable scalars.
    pub fn numel(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Current values, by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// Overwrites values from `values` (shapes must match; every parameter must be present).
    pub fn set_all(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let t = values.get(name).ok_or_else(|| Error::Spec(format!("no value for trainable tensor {name}")))?;
            if t.dims() != var.dims() {
                return Err(Error::Spec(format!("{name}: value has shape {:?}, parameter {:?}", t.dims(), var.dims())));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Initial values of LoRA / saved tensors, by canonical PEFT name, read from an adapter folder
/// (`adapter_model.safetensors`, either key layout). Every tensor must be used.
#[derive(Debug, Default)]
pub struct Init {
    tensors: HashMap<String, Tensor>,
    used: HashSet<String>,
}

/// Canonical PEFT name of an adapter file key: `base_model.model.` stripped, layout canonical.
pub fn canonical_key(key: &str) -> Option<String> {
    let name = key.strip_prefix("base_model.model.")?;
    for kind in [".lora_A.weight", ".lora_B.weight", ".base_layer.weight"] {
        if let Some(m) = name.strip_suffix(kind) {
            return Some(format!("{}{kind}", lavic_model::lora::canonical_name(m)));
        }
    }
    Some(lavic_model::lora::canonical_name(name))
}

impl Init {
    /// Reads `dir/adapter_model.safetensors` in f32.
    pub fn from_adapter(dir: &std::path::Path) -> Result<Self> {
        let file = dir.join("adapter_model.safetensors");
        let raw = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| Error::Spec(format!("{}: {e}", file.display())))?;
        let mut tensors = HashMap::new();
        for (k, t) in raw {
            let name = canonical_key(&k)
                .ok_or_else(|| Error::Spec(format!("{}: key {k} does not start with base_model.model.", file.display())))?;
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        Ok(Self { tensors, used: HashSet::new() })
    }

    fn take(&mut self, name: &str) -> Option<Tensor> {
        let t = self.tensors.get(name)?.clone();
        self.used.insert(name.to_string());
        Some(t)
    }

    /// Fails naming the first tensor no layer took.
    pub fn check_all_used(&self) -> Result<()> {
        let mut unused: Vec<&String> = self.tensors.keys().filter(|k| !self.used.contains(*k)).collect();
        unused.sort();
        match unused.first() {
            Some(k) => Err(Error::Spec(format!(
                "initial adapter tensor {k} matches no trainable tensor of this model and spec ({} unused)",
                unused.len()
            ))),
            None => Ok(()),
        }
    }
}

/// Creates a model's layers: frozen tensors from the checkpoint (with any frozen adapters that
/// `w` carries merged in), LoRA and `modules_to_save` tensors as trainable [`Var`]s registered
/// in [`Params`].
pub struct Builder<'a> {
    /// What is trained (None: everything frozen).
    pub spec: Option<&'a LoraSpec>,
    /// Where trainable tensors are registered.
    pub params: &'a mut Params,
    /// Initial values (from an adapter), if any; otherwise PEFT's initialisation.
    pub init: Option<&'a mut Init>,
    /// Draws the kaiming-uniform A matrices.
    pub rng: &'a mut Rng,
}

impl Builder<'_> {
    fn module_saved(&self, module: &str) -> bool {
        self.spec.is_some_and(|s| s.saves(module))
    }

    /// A tensor `name` of the module at `w`; trainable when the module is in `modules_to_save`.
    /// `rows` keeps the first rows (the vocabulary resize).
    fn tensor(&mut self, w: &Weights, shape: &[usize], name: &str, rows: Option<usize>) -> Result<Tensor> {
        let base = match rows {
            Some(r) => w.get_rows(r, shape[1], name)?,
            None => w.get(shape, name)?,
        };
        self.finish(w, name, base)
    }

    /// Applies an initial adapter's saved base layer and makes the tensor trainable when its
    /// module is in `modules_to_save`.
    fn finish(&mut self, w: &Weights, name: &str, base: Tensor) -> Result<Tensor> {
        let module = w.prefix().to_string();
        let full = format!("{module}.{name}");
        // peft's `<module>.base_layer.weight` (save_embedding_layers) replaces the frozen base.
        let base = match self.init.as_deref_mut().and_then(|i| i.take(&format!("{module}.base_layer.{name}"))) {
            Some(t) => {
                check(&full, &t, base.dims())?;
                t.to_dtype(base.dtype())?.to_device(base.device())?
            }
            None => base,
        };
        if !self.module_saved(&module) {
            return Ok(base);
        }
        let value = match self.init.as_deref_mut().and_then(|i| i.take(&full)) {
            Some(t) => {
                check(&full, &t, base.dims())?;
                t.to_dtype(DType::F32)?.to_device(base.device())?
            }
            None => base.to_dtype(DType::F32)?,
        };
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().to_dtype(base.dtype())?;
        self.params.vars.insert(full, var);
        Ok(t)
    }

    /// A frozen (or `modules_to_save`) tensor of the module at `w`.
    pub fn get(&mut self, w: &Weights, shape: &[usize], name: &str) -> Result<Tensor> {
        self.tensor(w, shape, name, None)
    }

    /// The first `rows` rows of a 2-D tensor (resized embeddings).
    pub fn get_rows(&mut self, w: &Weights, rows: usize, cols: usize, name: &str) -> Result<Tensor> {
        self.tensor(w, &[rows, cols], name, Some(rows))
    }

    /// The Linear layer at `w` (`out x in`, optional bias), with LoRA if the spec targets it.
    /// `rows` keeps only the first `out` rows of the stored weight (resized lm_head).
    pub fn linear(&mut self, w: &Weights, in_dim: usize, out_dim: usize, bias: bool, rows: bool) -> Result<LoraLinear> {
        let module = w.prefix().to_string();
        // lavic-model's loader: checkpoint (or modules_to_save) tensors with the frozen
        // adapters' updates merged in.
        let merged = if rows { w.linear_rows(in_dim, out_dim)? } else { w.linear(in_dim, out_dim, bias)? };
        let weight = self.finish(w, "weight", merged.weight().clone())?;
        let b = match merged.bias() {
            Some(t) => Some(self.finish(w, "bias", t.clone())?),
            None => None,
        };
        let lora = match self.spec {
            Some(spec) if spec.targets(&module)? => {
                let (r, scale) = spec.rank_and_scale(&module)?;
                let device = weight.device().clone();
                let (a_name, b_name) = (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"));
                let (a, bb) = match self.init.as_deref_mut() {
                    Some(init) => {
                        let a = init.take(&a_name).ok_or_else(|| Error::Spec(format!("initial adapter has no {a_name}")))?;
                        let bb = init.take(&b_name).ok_or_else(|| Error::Spec(format!("initial adapter has no {b_name}")))?;
                        check(&a_name, &a, &[r, in_dim])?;
                        check(&b_name, &bb, &[out_dim, r])?;
                        (a.to_device(&device)?, bb.to_device(&device)?)
                    }
                    None => {
                        let bound = 1.0 / (in_dim as f64).sqrt();
                        let v: Vec<f32> = (0..r * in_dim).map(|_| self.rng.uniform_range(-bound, bound) as f32).collect();
                        (Tensor::from_vec(v, (r, in_dim), &device)?, Tensor::zeros((out_dim, r), DType::F32, &device)?)
                    }
                };
                let (a, bb) = (Var::from_tensor(&a)?, Var::from_tensor(&bb)?);
                self.params.vars.insert(a_name, a.clone());
                self.params.vars.insert(b_name, bb.clone());
                Some(Lora { a, b: bb, scale, dropout: spec.dropout })
            }
            _ => None,
        };
        Ok(LoraLinear::new(module, weight, b, lora))
    }
}

fn check(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::Spec(format!("{name} has shape {:?}, expected {want:?}", t.dims())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_linear_is_base_plus_scaled_low_rank_and_trains_a_and_b() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(1);
        let mut t = |shape: &[usize]| {
            let n = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &dev).unwrap()
        };
        let (w, b, a, bb, x) = (t(&[6, 5]), t(&[6]), t(&[2, 5]), t(&[6, 2]), t(&[3, 4, 5]));
        let lora = Lora { a: Var::from_tensor(&a).unwrap(), b: Var::from_tensor(&bb).unwrap(), scale: 4.0, dropout: 0.0 };
        let lin = LoraLinear::new("m", w.clone(), Some(b.clone()), Some(lora.clone()));
        let y = lin.forward(&x, &mut Ctx::eval()).unwrap();
        let merged = (w + (bb.matmul(&a).unwrap() * 4.0).unwrap()).unwrap();
        let want = candle_nn::Linear::new(merged, Some(b)).forward(&x).unwrap();
        let e = (y.clone() - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(e < 1e-5, "{e}");
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&lora.a, &lora.b] {
            let gv = g.get(v.as_tensor()).expect("LoRA tensor has no gradient");
            assert!(gv.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    #[test]
    fn dropout_keeps_expected_share_and_scales() {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let mut rng = Rng::new(5);
        let y = dropout(&x, 0.1, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count();
        assert!((800..1200).contains(&zeros), "{zeros}");
        assert!(y.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        let again = dropout(&x, 0.1, &mut Rng::new(5)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, again, "same seed, same mask");
    }
}
