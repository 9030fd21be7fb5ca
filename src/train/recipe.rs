//! How the final layer is trained beyond retrain.py's SGD: per-feature standardisation of
//! the bottlenecks and L2 weight decay, and which of them a bottleneck gets by default.

/// What the final layer's training adds to retrain.py's plain SGD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalLayerRecipe {
    /// Train on bottlenecks standardised per value (the training bottlenecks' mean and
    /// standard deviation), folded back into the layer handed out: the graph still takes
    /// raw bottlenecks and needs no new op.
    pub standardize: bool,
    /// L2 weight decay: `decay * w` is added to each weight's gradient (biases are not
    /// decayed). With standardisation, the decay applies to the weights of the
    /// standardised values, before folding.
    pub weight_decay: f32,
}

impl FinalLayerRecipe {
    /// retrain.py's layer: raw bottlenecks, no decay.
    pub const PLAIN: FinalLayerRecipe = FinalLayerRecipe {
        standardize: false,
        weight_decay: 0.0,
    };

    /// The recipe a bottleneck concatenated from `backbones` backbones gets unless the
    /// command line says otherwise: the one that won in cross-validation on the shared
    /// flower photos (BENCHMARKS.md, "Which final layer for combined backbones").
    /// retrain.py's plain SGD won for one backbone and for every combination measured:
    /// standardising lost on each, and weight decay moved nothing beyond the noise, so both
    /// stay available as flags and off by default. The backbone count is the question the
    /// retrain pipeline asks; the answer measured is the same for every count.
    pub fn default_for(_backbones: usize) -> FinalLayerRecipe {
        FinalLayerRecipe::PLAIN
    }

    /// [`FinalLayerRecipe::default_for`] with the parts the user gave replaced.
    pub fn chosen(
        backbones: usize,
        standardize: Option<bool>,
        weight_decay: Option<f32>,
    ) -> FinalLayerRecipe {
        let default = FinalLayerRecipe::default_for(backbones);
        FinalLayerRecipe {
            standardize: standardize.unwrap_or(default.standardize),
            weight_decay: weight_decay.unwrap_or(default.weight_decay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_parts_replace_the_default_and_the_rest_stays() {
        let default = FinalLayerRecipe::default_for(2);
        let chosen = FinalLayerRecipe::chosen(2, Some(!default.standardize), None);
        assert_eq!(chosen.standardize, !default.standardize);
        assert_eq!(chosen.weight_decay, default.weight_decay);
        let chosen = FinalLayerRecipe::chosen(1, None, Some(0.25));
        assert_eq!(chosen.weight_decay, 0.25);
        assert_eq!(
            chosen.standardize,
            FinalLayerRecipe::default_for(1).standardize
        );
        assert_eq!(
            FinalLayerRecipe::chosen(3, None, None),
            FinalLayerRecipe::default_for(3)
        );
    }

    #[test]
    fn one_backbone_keeps_retrain_py_s_layer() {
        assert_eq!(FinalLayerRecipe::default_for(1), FinalLayerRecipe::PLAIN);
    }
}
