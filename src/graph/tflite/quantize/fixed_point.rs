//! TFLite's integer arithmetic (gemmlowp's fixed point, `quantization_util.cc`,
//! `kernels/internal/common.h`), bit for bit: a real multiplier becomes a 31-bit
//! significand and a power of two, and rescaling an int32 accumulator rounds exactly as
//! TensorFlow Lite's kernels do, so flowers' int8 scores equal `tf.lite.Interpreter`'s.

/// A positive real multiplier as TFLite stores it: `real ~= multiplier * 2^(shift - 31)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multiplier {
    pub multiplier: i32,
    pub shift: i32,
}

impl Multiplier {
    /// `QuantizeMultiplier`: `frexp`, the significand rounded (half away from zero) to 31
    /// bits; a significand that rounds up to 2^31 is halved, a multiplier too small for
    /// 31 bits of shift becomes zero, and one of 2^30 or more saturates (a damaged file's
    /// scales must not make the shift overflow).
    pub fn new(real: f64) -> Multiplier {
        if real <= 0.0 || !real.is_finite() {
            return Multiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        let (significand, mut shift) = frexp(real);
        let mut fixed = (significand * (1i64 << 31) as f64).round() as i64;
        if fixed == 1i64 << 31 {
            fixed /= 2;
            shift += 1;
        }
        if shift < -31 {
            return Multiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        if shift > 30 {
            // As TFLite saturates it: no real model rescales by 2^30 or more.
            return Multiplier {
                multiplier: i32::MAX,
                shift: 30,
            };
        }
        Multiplier {
            multiplier: fixed as i32,
            shift,
        }
    }

    /// `MultiplyByQuantizedMultiplier`: a left shift, the rounding doubling high
    /// multiply, then the rounding right shift (TFLite's default "double rounding").
    pub fn apply(self, x: i32) -> i32 {
        let left = self.shift.max(0);
        let right = (-self.shift).max(0);
        let high =
            saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), self.multiplier);
        rounding_divide_by_pot(high, right)
    }
}

/// `frexp` for positive finite normal numbers: `x = significand * 2^exponent`,
/// significand in [0.5, 1).
fn frexp(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (significand, exponent) = frexp(x * 2f64.powi(64));
        return (significand, exponent - 64);
    }
    let significand = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (significand, biased - 1022)
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2 * a * b`,
/// rounded to nearest; ties go up (a nudge of 2^30, or 1 - 2^30 below zero, then C++'s
/// division that truncates towards zero).
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away
/// from zero.
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_are_tflites() {
        // 0.5 = 2^30 * 2^(0 - 31); 1.0 = 2^30 * 2^(1 - 31); 0.75 = 3 * 2^29 * 2^-31.
        assert_eq!(
            Multiplier::new(0.5),
            Multiplier {
                multiplier: 1 << 30,
                shift: 0
            }
        );
        assert_eq!(
            Multiplier::new(1.0),
            Multiplier {
                multiplier: 1 << 30,
                shift: 1
            }
        );
        assert_eq!(
            Multiplier::new(0.75),
            Multiplier {
                multiplier: 3 << 29,
                shift: 0
            }
        );
        assert_eq!(
            Multiplier::new(0.0),
            Multiplier {
                multiplier: 0,
                shift: 0
            }
        );
        assert_eq!(Multiplier::new(1e-12).multiplier, 0);
        let m = Multiplier::new(0.001);
        let real = f64::from(m.multiplier) * 2f64.powi(m.shift - 31);
        assert!((real - 0.001).abs() < 1e-12, "{m:?}");
        assert_eq!(frexp(f64::MIN_POSITIVE / 4.0), (0.5, -1023));
    }

    #[test]
    fn rescaling_rounds_as_gemmlowp() {
        let half = Multiplier::new(0.5);
        // The high multiply's ties go up: 1.5 -> 2, -1.5 -> -1, -2.5 -> -2.
        assert_eq!([3, 5, -3, -5, 4].map(|x| half.apply(x)), [2, 3, -1, -2, 2]);
        assert_eq!(Multiplier::new(1.0).apply(-7), -7);
        assert_eq!(Multiplier::new(3.0).apply(7), 21);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2); // -1.5 -> -2
        assert_eq!(rounding_divide_by_pot(6, 2), 2); // 1.5 -> 2
        assert_eq!(rounding_divide_by_pot(5, 2), 1); // 1.25 -> 1
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
    }
}
