//! LLaVA's multi-modal projector: `linear_1` (vision width -> text width), GELU (exact erf form,
//! `projector_hidden_act = "gelu"`), `linear_2`.

use candle_core::{Module, Tensor};

use crate::config::Activation;
use crate::error::Result;
use crate::lora::Linear;
use crate::weights::Weights;

/// `multi_modal_projector`.
pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl Projector {
    /// Loads `multi_modal_projector.linear_{1,2}`.
    pub fn load(w: &Weights, vision: usize, text: usize, act: Activation, bias: bool) -> Result<Self> {
        Ok(Self {
            linear_1: w.pp("linear_1").linear(vision, text, bias)?,
            linear_2: w.pp("linear_2").linear(text, text, bias)?,
            act,
        })
    }

    /// Projects vision features `[.., vision]` to text embeddings `[.., text]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.to_dtype(self.linear_1.weight().dtype())?;
        Ok(self.linear_2.forward(&self.act.apply(&self.linear_1.forward(&xs)?)?)?)
    }
}
