//! Checkpoint access: memory-mapped (sharded) safetensors, either key layout, dtype/device
//! choice, vocabulary resizing and LoRA merging at load time.
//!
//! [`Weights`] plays the role of candle's `VarBuilder`: modules ask for tensors by the path of
//! their module (`pp`), written in the canonical (transformers < 4.52) layout; the checkpoint's
//! own keys are mapped onto it, so llava-hf checkpoints saved by either transformers generation
//! load. Tensors keep the checkpoint dtype unless another one was asked for.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{read_json, Error, Result};
use crate::lora::{canonical_name, Adapter, Linear};

/// The tensors of a checkpoint folder, memory-mapped.
pub struct Checkpoint {
    dir: PathBuf,
    st: MmapedSafetensors,
    /// canonical name -> key in the files
    keys: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` + shards, or a single `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (files, expected): (Vec<PathBuf>, Option<HashMap<String, String>>) = if index_path.exists() {
            let index: Index = read_json(&index_path)?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            let mut files = Vec::new();
            for s in shards {
                let p = dir.join(s);
                if !p.exists() {
                    return Err(Error::Checkpoint(format!(
                        "shard {} listed in {} is missing",
                        p.display(),
                        index_path.display()
                    )));
                }
                files.push(p);
            }
            (files, Some(index.weight_map))
        } else if single.exists() {
            (vec![single], None)
        } else {
            return Err(Error::Checkpoint(format!(
                "{}: neither model.safetensors.index.json nor model.safetensors found",
                dir.display()
            )));
        };
        // SAFETY: the files are mapped read-only; the checkpoint folder must not be modified while
        // the model is loaded (the same contract as every mmap-based loader).
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.display())))?;
        let mut keys = HashMap::new();
        for (key, _) in st.tensors() {
            keys.insert(canonical_name(&key), key);
        }
        if let Some(expected) = expected {
            for (key, file) in expected {
                if !keys.contains_key(&canonical_name(&key)) {
                    return Err(Error::Checkpoint(format!(
                        "tensor {key} is listed in the index but missing from {file}"
                    )));
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), st, keys })
    }

    /// Whether a canonical tensor name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    /// Loads one tensor by canonical name, in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let key = self.keys.get(name).ok_or_else(|| {
            Error::Checkpoint(format!("tensor {name} not found in {}", self.dir.display()))
        })?;
        self.st
            .load(key, device)
            .map_err(|e| Error::Checkpoint(format!("tensor {key} in {}: {e}", self.dir.display())))
    }

    /// Canonical names of every tensor, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keys.keys().cloned().collect();
        v.sort();
        v
    }

    /// Feeds the stored dtype, shape and raw bytes of a tensor to `f` (no copy).
    pub fn with_raw<R>(&self, name: &str, f: impl FnOnce(&str, &[usize], &[u8]) -> R) -> Result<R> {
        let key = self.keys.get(name).ok_or_else(|| {
            Error::Checkpoint(format!("tensor {name} not found in {}", self.dir.display()))
        })?;
        let view = self.st.get(key).map_err(|e| Error::Checkpoint(format!("tensor {key}: {e}")))?;
        Ok(f(&format!("{:?}", view.dtype()), view.shape(), view.data()))
    }

    /// Stored dtype of a tensor.
    pub fn dtype_of(&self, name: &str) -> Option<DType> {
        let key = self.keys.get(name)?;
        let view = self.st.get(key).ok()?;
        DType::try_from(view.dtype()).ok()
    }
}

/// Shared state behind every [`Weights`] handle.
struct Store {
    ckpt: Arc<Checkpoint>,
    dtype: DType,
    device: Device,
    adapters: Vec<Arc<Adapter>>,
    merge: bool,
}

/// A handle on the checkpoint at a module path (like `VarBuilder::pp`).
#[derive(Clone)]
pub struct Weights {
    store: Arc<Store>,
    prefix: String,
}

impl Weights {
    /// Wraps a checkpoint. `merge = false` keeps LoRA updates unmerged on each [`Linear`].
    pub fn new(ckpt: Arc<Checkpoint>, dtype: DType, device: Device, adapters: Vec<Arc<Adapter>>, merge: bool) -> Self {
        Self { store: Arc::new(Store { ckpt, dtype, device, adapters, merge }), prefix: String::new() }
    }

    /// The handle for a sub-module.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        Self { store: self.store.clone(), prefix: self.path(name.as_ref()) }
    }

    /// The module path this handle points at (canonical layout; empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{}", self.prefix, name) }
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    /// Device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// Whether the tensor exists (in the checkpoint or as a saved adapter module).
    pub fn contains(&self, name: &str) -> bool {
        self.store.ckpt.contains(&self.path(name))
    }

    /// A tensor of the given shape, from a `modules_to_save` entry when an adapter has one.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.path(name);
        let t = self.raw(&full)?;
        check_shape(&full, &t, shape)?;
        Ok(t)
    }

    /// The first `rows` rows of a 2-D tensor: the vocabulary resize that
    /// `resize_token_embeddings(len(tokenizer))` performs when the tokenizer is shorter.
    pub fn get_rows(&self, rows: usize, cols: usize, name: &str) -> Result<Tensor> {
        let full = self.path(name);
        let t = self.raw(&full)?;
        let (have, c) = t.dims2().map_err(|_| Error::Checkpoint(format!("{full} is not 2-D")))?;
        if c != cols {
            return Err(Error::Checkpoint(format!("{full}: expected {cols} columns, found {c}")));
        }
        if rows > have {
            return Err(Error::Unsupported(format!(
                "{full} has {have} rows but the tokenizer has {rows} tokens; growing the vocabulary \
                 needs newly initialised rows, which a trained LaViC checkpoint never has"
            )));
        }
        Ok(if rows == have { t } else { t.narrow(0, 0, rows)?.contiguous()? })
    }

    fn raw(&self, full: &str) -> Result<Tensor> {
        for a in &self.store.adapters {
            if let Some(t) = a.take_saved(full) {
                return Ok(t.to_dtype(self.store.dtype)?.to_device(&self.store.device)?);
            }
        }
        let t = self.store.ckpt.load(full, &self.store.device)?;
        Ok(t.to_dtype(self.store.dtype)?)
    }

    /// A linear layer `out x in` (+ bias) with every adapter's update for this module.
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&[out_dim, in_dim], "weight")?;
        self.finish_linear(w, bias, out_dim)
    }

    /// Like [`Weights::linear`] keeping only the first `out_dim` output rows (resized lm_head).
    pub fn linear_rows(&self, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let w = self.get_rows(out_dim, in_dim, "weight")?;
        self.finish_linear(w, false, out_dim)
    }

    fn finish_linear(&self, w: Tensor, bias: bool, out_dim: usize) -> Result<Linear> {
        let b = if bias { Some(self.get(&[out_dim], "bias")?) } else { None };
        let (out_dim, in_dim) = w.dims2()?;
        let mut lin = Linear::new(w, b);
        for a in &self.store.adapters {
            if let Some(d) = a.take_delta(&self.prefix) {
                let (ar, ai) = d.a.dims2()?;
                let (bo, br) = d.b.dims2()?;
                if ai != in_dim || bo != out_dim || ar != br {
                    return Err(Error::Adapter {
                        path: a.path.clone(),
                        reason: format!(
                            "{}: lora_A is {ar}x{ai} and lora_B is {bo}x{br}, but the layer is {out_dim}x{in_dim}",
                            self.prefix
                        ),
                    });
                }
                lin.attach(d);
            }
        }
        if self.store.merge {
            lin.merge()?;
        }
        Ok(lin)
    }

    /// Fails if an adapter carries a tensor no module asked for.
    pub fn check_adapters_used(&self) -> Result<()> {
        self.store.adapters.iter().try_for_each(|a| a.check_all_used())
    }
}

fn check_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::Checkpoint(format!(
            "tensor {name} has shape {:?}, expected {want:?}",
            t.dims()
        )));
    }
    Ok(())
}
