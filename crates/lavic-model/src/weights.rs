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

use candle_core::{DType, Device, Tensor};

use crate::error::{read_json, Error, Result};
use crate::lora::{canonical_name, Adapter, Linear};

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    /// key -> (dtype, shape, data offsets relative to `data_start`)
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is mapped read-only; the checkpoint folder must not be modified while
        // the model is loading (the same contract as every mmap-based loader).
        let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        let tensors = meta.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(Self { path: path.to_path_buf(), mmap, data_start: 8 + header_len, tensors })
    }

    /// The stored bytes of a tensor (checked against the file length by `read_metadata`).
    fn bytes(&self, info: &safetensors::tensor::TensorInfo) -> &[u8] {
        let (a, b) = info.data_offsets;
        &self.mmap[self.data_start + a..self.data_start + b]
    }

    /// Drops the mapped pages of `bytes` (a slice of this map) from the process: once a tensor has
    /// been copied out, its file pages would otherwise stay in our resident set next to the copy
    /// and a 15 GB checkpoint would peak at ~2x its size. The pages stay in the page cache and are
    /// read back on a later access, so this changes memory use, never values.
    fn release(&self, bytes: &[u8]) {
        let page = 4096;
        let base = self.mmap.as_ptr() as usize;
        let start = (bytes.as_ptr() as usize - base) / page * page;
        let end = (bytes.as_ptr() as usize - base + bytes.len()).min(self.mmap.len());
        if end > start {
            // SAFETY: a read-only, file-backed mapping: MADV_DONTNEED only discards the mapped
            // pages; later reads fault them in again from the file with the same contents. No
            // reference into the range is alive here (the tensor was copied out).
            // Failure only means the pages stay resident, so it is ignored.
            #[cfg(unix)]
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

/// The tensors of a checkpoint folder, memory-mapped. Each tensor is copied out once (in its
/// stored dtype) and its mapped pages are released right away, so loading holds the weights
/// once, not twice.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// canonical name -> (shard, key in the file)
    keys: HashMap<String, (usize, String)>,
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
        let shards = files.iter().map(|f| Shard::open(f)).collect::<Result<Vec<_>>>()?;
        let mut keys = HashMap::new();
        // If a key appears in several files, the last one wins (as candle's multi-file loader).
        for (i, shard) in shards.iter().enumerate() {
            for key in shard.tensors.keys() {
                keys.insert(canonical_name(key), (i, key.clone()));
            }
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
        Ok(Self { dir: dir.to_path_buf(), shards, keys })
    }

    fn find(&self, name: &str) -> Result<(&Shard, &str, &safetensors::tensor::TensorInfo)> {
        let (i, key) = self.keys.get(name).ok_or_else(|| {
            Error::Checkpoint(format!("tensor {name} not found in {}", self.dir.display()))
        })?;
        let shard = &self.shards[*i];
        let info = shard.tensors.get(key).ok_or_else(|| {
            Error::Checkpoint(format!("tensor {key} not found in {}", shard.path.display()))
        })?;
        Ok((shard, key, info))
    }

    /// Whether a canonical tensor name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    /// Loads one tensor by canonical name, in its stored dtype (one copy; the mapped pages are
    /// released afterwards).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        use candle_core::safetensors::Load;
        let (shard, key, info) = self.find(name)?;
        let bytes = shard.bytes(info);
        let err = |e: String| Error::Checkpoint(format!("tensor {key} in {}: {e}", shard.path.display()));
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), bytes)
            .map_err(|e| err(e.to_string()))?;
        let t = view.load(device).map_err(|e| err(e.to_string()))?;
        shard.release(bytes);
        Ok(t)
    }

    /// Canonical names of every tensor, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keys.keys().cloned().collect();
        v.sort();
        v
    }

    /// Feeds the stored dtype, shape and raw bytes of a tensor to `f` (no copy; the mapped pages
    /// are released afterwards).
    pub fn with_raw<R>(&self, name: &str, f: impl FnOnce(&str, &[usize], &[u8]) -> R) -> Result<R> {
        let (shard, _, info) = self.find(name)?;
        let bytes = shard.bytes(info);
        let r = f(&format!("{:?}", info.dtype), &info.shape, bytes);
        shard.release(bytes);
        Ok(r)
    }

    /// Stored dtype of a tensor.
    pub fn dtype_of(&self, name: &str) -> Option<DType> {
        let (_, _, info) = self.find(name).ok()?;
        DType::try_from(info.dtype).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
    }

    /// Our mmap loader (which releases each tensor's pages after copying it) gives exactly what
    /// candle's own safetensors loader gives, for every tensor of both sharded fixtures, also on a
    /// second load after the pages were released.
    #[test]
    fn checkpoint_loads_every_tensor_exactly_as_candle_does() -> anyhow::Result<()> {
        for model in ["tiny-mistral", "tiny-llama"] {
            let dir = fixture(model);
            let ckpt = Checkpoint::open(&dir)?;
            let mut expected = HashMap::new();
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    expected.extend(candle_core::safetensors::load(&p, &Device::Cpu)?);
                }
            }
            assert_eq!(ckpt.names().len(), expected.len(), "{model}");
            for (key, want) in &expected {
                let name = canonical_name(key);
                for round in 0..2 {
                    let got = ckpt.load(&name, &Device::Cpu)?;
                    assert_eq!(got.dtype(), want.dtype(), "{model} {key}");
                    assert_eq!(got.dims(), want.dims(), "{model} {key}");
                    let same = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
                        == want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    assert!(same, "{model} {key} differs (round {round})");
                }
                assert_eq!(ckpt.dtype_of(&name), Some(want.dtype()));
                let bytes = ckpt.with_raw(&name, |dtype, shape, bytes| {
                    assert_eq!(dtype, format!("{:?}", want.dtype()).to_uppercase());
                    assert_eq!(shape, want.dims());
                    bytes.len()
                })?;
                assert_eq!(bytes, want.elem_count() * want.dtype().size_in_bytes());
            }
        }
        Ok(())
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let ckpt = Checkpoint::open(&fixture("tiny-mistral")).unwrap();
        let e = ckpt.load("no.such.tensor", &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("no.such.tensor"), "{e}");
    }
}
