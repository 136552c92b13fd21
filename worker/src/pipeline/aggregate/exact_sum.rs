//! An exact sum of doubles and integers, rounded once when a result is written.
//!
//! Adding doubles one by one rounds after every addition, so the result depends on the
//! order of the inputs (and a session merge changes that order) and can overflow to
//! infinity on the way to a finite total. Every finite double is an integer multiple of
//! 2^-1074, and every integer input one of 2^0, so the sum is kept as one integer in units
//! of 2^-1088 (17 limbs of 64 bits below the binary point), two's complement, in as many
//! limbs as it needs: adding is exact and the order never matters. Only the result is
//! rounded, once, to the nearest double (ties to even), as is the mean.

/// Limbs below the binary point: limb `i` weighs 2^(64 × i - 1088).
const FRACTION_LIMBS: u32 = 17;
/// The power of two of bit 0 of limb 0.
const UNIT_EXPONENT: i64 = -(FRACTION_LIMBS as i64) * 64;

/// An exact sum: an integer of `limbs` (two's complement, little-endian) in units of
/// 2^(64 × low - 1088).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExactSum {
    /// The index of `limbs[0]`.
    low: u32,
    /// Normalised: no zero limb at the bottom, no limb at the top that only repeats the
    /// sign of the one below; empty for zero.
    limbs: Vec<u64>,
}

impl ExactSum {
    /// The sum of `value` alone (finite).
    pub fn of_f64(value: f64) -> Self {
        let mut sum = Self::default();
        sum.add_f64(value);
        sum
    }

    /// Whether the sum is zero.
    pub fn is_zero(&self) -> bool {
        self.limbs.is_empty()
    }

    /// Adds a finite double, exactly.
    pub fn add_f64(&mut self, value: f64) {
        debug_assert!(value.is_finite(), "only finite doubles have a sum");
        let bits = value.to_bits();
        let biased_exponent = (bits >> 52) & 0x7ff;
        let fraction = bits & ((1 << 52) - 1);
        // value = mantissa × 2^exponent
        let (mantissa, exponent) = if biased_exponent == 0 {
            (fraction, -1074)
        } else {
            // (at most 2046 - 1075 = 971)
            #[allow(clippy::cast_possible_wrap)]
            let exponent = biased_exponent as i64 - 1075;
            (fraction | (1 << 52), exponent)
        };
        if mantissa == 0 {
            return;
        }
        // Bit position from the unit: at least -1074 + 1088 = 14.
        let position = u32::try_from(exponent - UNIT_EXPONENT).unwrap_or(0);
        let chunk = i128::from(mantissa) << (position % 64);
        let chunk = if value.is_sign_negative() {
            -chunk
        } else {
            chunk
        };
        self.add_chunk(position / 64, chunk);
    }

    /// Adds an integer, exactly.
    pub fn add_integer(&mut self, value: i128) {
        self.add_chunk(FRACTION_LIMBS, value);
    }

    /// Adds another sum, exactly.
    pub fn add_sum(&mut self, other: &ExactSum) {
        let Some((top, rest)) = other.limbs.split_last() else {
            return;
        };
        for (offset, limb) in rest.iter().enumerate() {
            self.add_chunk(other.low + offset as u32, i128::from(*limb));
        }
        #[allow(clippy::cast_possible_wrap)]
        let top = *top as i64;
        self.add_chunk(other.low + rest.len() as u32, i128::from(top));
    }

    /// Subtracts another sum, exactly.
    pub fn subtract_sum(&mut self, other: &ExactSum) {
        let mut negated = other.clone();
        negated.negate();
        self.add_sum(&negated);
    }

    /// An upper bound `b` of the magnitude: |sum| < 2^b.
    pub fn magnitude_bits(&self) -> i64 {
        UNIT_EXPONENT + 64 * (i64::from(self.low) + self.limbs.len() as i64)
    }

    /// The nearest double (ties to even), infinite when the sum is beyond the doubles.
    pub fn to_f64(&self) -> f64 {
        self.mean(1)
    }

    /// The nearest double to the sum divided by `count` (ties to even). A zero result is
    /// `0.0`, never `-0.0`.
    pub fn mean(&self, count: u64) -> f64 {
        if self.limbs.is_empty() || count == 0 {
            return 0.0;
        }
        let negative = self.is_negative();
        let mut magnitude = self.clone();
        if negative {
            magnitude.negate();
        }
        // Non-negative now, so its limbs read as an unsigned integer. Two more limbs below
        // (down to the unit at most) give the quotient at least 64 significant bits, more
        // than the 53 of a double and its rounding bit.
        let extra = magnitude.low.min(2);
        let mut limbs = vec![0; extra as usize];
        limbs.extend_from_slice(&magnitude.limbs);
        let low = i64::from(magnitude.low - extra);
        let mut remainder: u128 = 0;
        for limb in limbs.iter_mut().rev() {
            let current = (remainder << 64) | u128::from(*limb);
            *limb = u64::try_from(current / u128::from(count)).unwrap_or(u64::MAX);
            remainder = current % u128::from(count);
        }
        let Some(top) = limbs.iter().rposition(|limb| *limb != 0) else {
            // The quotient is below the unit (a mean far below the least double).
            return 0.0;
        };
        let (bits, lowest_exponent, below) = if top == 0 {
            (u128::from(limbs[0]), UNIT_EXPONENT + 64 * low, &limbs[..0])
        } else {
            (
                (u128::from(limbs[top]) << 64) | u128::from(limbs[top - 1]),
                UNIT_EXPONENT + 64 * (low + top as i64 - 1),
                &limbs[..top - 1],
            )
        };
        let sticky = remainder != 0 || below.iter().any(|limb| *limb != 0);
        nearest_f64(negative, bits, lowest_exponent, sticky)
    }

    /// Its parts, for the state format (`state::format`): the index of the lowest limb,
    /// and the limbs, least significant first.
    pub fn parts(&self) -> (u32, &[u64]) {
        (self.low, &self.limbs)
    }

    /// The sum of the parts [`Self::parts`] gave.
    pub fn from_parts(low: u32, limbs: Vec<u64>) -> Self {
        let mut sum = Self { low, limbs };
        sum.normalize();
        sum
    }

    fn is_negative(&self) -> bool {
        self.limbs.last().is_some_and(|top| top >> 63 == 1)
    }

    fn negate(&mut self) {
        // One more limb: the negation of the most negative value needs it.
        let sign = if self.is_negative() { u64::MAX } else { 0 };
        self.limbs.push(sign);
        let mut carry = true;
        for limb in &mut self.limbs {
            let (value, overflow) = (!*limb).overflowing_add(u64::from(carry));
            *limb = value;
            carry = overflow;
        }
        self.normalize();
    }

    /// Adds `chunk` (sign-extended) at limb `index`.
    fn add_chunk(&mut self, index: u32, chunk: i128) {
        if chunk == 0 {
            return;
        }
        if self.limbs.is_empty() {
            self.low = index;
        }
        if index < self.low {
            let missing = (self.low - index) as usize;
            self.limbs.splice(0..0, std::iter::repeat_n(0, missing));
            self.low = index;
        }
        // The chunk's two limbs, then one limb of headroom above both operands: the sum
        // of two numbers of n limbs fits in n + 1.
        let sign = if self.is_negative() { u64::MAX } else { 0 };
        let needed = ((index - self.low) as usize + 2).max(self.limbs.len()) + 1;
        self.limbs.resize(needed, sign);
        let chunk_sign = if chunk < 0 { u64::MAX } else { 0 };
        #[allow(clippy::cast_sign_loss)]
        let (chunk_low, chunk_high) = (chunk as u64, (chunk >> 64) as u64);
        let start = (index - self.low) as usize;
        let mut carry = false;
        for (offset, limb) in self.limbs[start..].iter_mut().enumerate() {
            let addend = match offset {
                0 => chunk_low,
                1 => chunk_high,
                _ => chunk_sign,
            };
            let (partial, first) = limb.overflowing_add(addend);
            let (value, second) = partial.overflowing_add(u64::from(carry));
            *limb = value;
            carry = first || second;
        }
        // (A carry out of the top limb is the two's complement wrap: the headroom limb
        // keeps the value right.)
        self.normalize();
    }

    fn normalize(&mut self) {
        while let [.., below, top] = self.limbs[..] {
            let redundant = (top == 0 && below >> 63 == 0) || (top == u64::MAX && below >> 63 == 1);
            if !redundant {
                break;
            }
            self.limbs.pop();
        }
        if self.limbs == [0] {
            self.limbs.clear();
        }
        let zeros = self.limbs.iter().take_while(|limb| **limb == 0).count();
        if zeros > 0 {
            self.limbs.drain(..zeros);
            self.low += zeros as u32;
        }
        if self.limbs.is_empty() {
            self.low = 0;
        }
    }
}

/// The nearest double (ties to even) to `(-1)^negative × (bits × 2^lowest_exponent + ε)`,
/// where ε is a positive amount below 2^lowest_exponent when `sticky`, else zero; `bits`
/// is not zero. A result that rounds to zero is `0.0`.
fn nearest_f64(negative: bool, bits: u128, lowest_exponent: i64, sticky: bool) -> f64 {
    let leading = 127 - i64::from(bits.leading_zeros());
    let exponent = leading + lowest_exponent;
    // The last bit a double keeps: 53 bits, or down to 2^-1074 (subnormals).
    let mut kept_exponent = (exponent - 52).max(-1074);
    let drop = kept_exponent - lowest_exponent;
    let (mut mantissa, round, sticky) = if drop <= 0 {
        // Exact: the bits fit (fewer than 53 of them, or a subnormal).
        (bits << (-drop), false, sticky)
    } else if drop > 128 {
        (0, false, true)
    } else {
        let half = 1u128 << (drop - 1);
        let mantissa = if drop == 128 { 0 } else { bits >> drop };
        (mantissa, bits & half != 0, sticky || bits & (half - 1) != 0)
    };
    if round && (sticky || mantissa & 1 == 1) {
        mantissa += 1;
        if mantissa == 1 << 53 {
            mantissa >>= 1;
            kept_exponent += 1;
        }
    }
    if mantissa == 0 {
        return 0.0;
    }
    let magnitude = if mantissa >= 1 << 52 {
        let biased = kept_exponent + 52 + 1023;
        if biased >= 2047 {
            f64::INFINITY
        } else {
            #[allow(clippy::cast_sign_loss)]
            let biased = biased as u64;
            #[allow(clippy::cast_possible_truncation)]
            let fraction = mantissa as u64 & ((1 << 52) - 1);
            f64::from_bits((biased << 52) | fraction)
        }
    } else {
        // A subnormal: kept_exponent is -1074.
        #[allow(clippy::cast_possible_truncation)]
        f64::from_bits(mantissa as u64)
    };
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(values: &[f64]) -> ExactSum {
        let mut sum = ExactSum::default();
        for value in values {
            sum.add_f64(*value);
        }
        sum
    }

    #[test]
    fn a_double_alone_comes_back_unchanged() {
        let values = [
            0.0,
            1.0,
            -1.0,
            0.1,
            -2.5e-300,
            f64::MAX,
            -f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            2.225_073_858_507_201e-308,
            9_007_199_254_740_993.0,
            1.844_674_407_370_955_2e19,
        ];
        for value in values {
            let sum = ExactSum::of_f64(value);
            assert_eq!(sum.to_f64().to_bits(), value.to_bits(), "{value:e}");
            let (low, limbs) = sum.parts();
            assert_eq!(
                ExactSum::from_parts(low, limbs.to_vec()),
                sum,
                "{value:e}: its parts give it back"
            );
        }
    }

    #[test]
    fn sums_exactly_in_any_order() {
        // Each of these loses the small terms when added in double arithmetic.
        let cases: Vec<(Vec<f64>, f64)> = vec![
            (vec![1e100, 1.0, -1e100], 1.0),
            (vec![0.1, 0.2, -0.3], 2.775_557_561_562_891_4e-17),
            (vec![f64::MAX, f64::MAX, -f64::MAX], f64::MAX),
            (vec![1.0, 1e-300, -1.0], 1e-300),
            (vec![5e-324, 5e-324, 5e-324], 1.5e-323),
            (vec![-0.0, 0.0, -0.0], 0.0),
            (vec![1e308, 1e308], f64::INFINITY),
            (vec![-1e308, -1e308], f64::NEG_INFINITY),
        ];
        for (values, expected) in cases {
            let forward = sum_of(&values);
            let mut reversed_values = values.clone();
            reversed_values.reverse();
            let reversed = sum_of(&reversed_values);
            assert_eq!(forward, reversed, "{values:?}");
            assert_eq!(forward.to_f64().to_bits(), expected.to_bits(), "{values:?}");
        }
    }

    #[test]
    fn rounds_ties_to_even_once() {
        // 2^53 + 1 is halfway between two doubles: ties go to the even one, 2^53.
        let two_53 = 9_007_199_254_740_992.0;
        let mut sum = ExactSum::of_f64(two_53);
        sum.add_integer(1);
        assert_eq!(sum.to_f64(), two_53);
        // Just above halfway rounds up, although each part alone is a tie or exact.
        sum.add_f64(1.0 / 1024.0);
        assert_eq!(sum.to_f64(), two_53 + 2.0);
        // i64::MAX and i64::MIN as integers.
        let mut integers = ExactSum::default();
        integers.add_integer(i128::from(i64::MAX));
        integers.add_integer(i128::from(i64::MAX));
        assert_eq!(integers.to_f64(), 1.844_674_407_370_955_2e19);
        assert_eq!(integers.mean(2), 9.223_372_036_854_776e18);
        integers.add_integer(-2 * i128::from(i64::MAX) - 1);
        assert_eq!(integers.to_f64(), -1.0);
    }

    #[test]
    fn divides_exactly_then_rounds() {
        let cases: Vec<(Vec<f64>, u64, f64)> = vec![
            (vec![1.0, 2.0], 3, 1.0),
            (vec![1.0], 3, 1.0 / 3.0),
            (vec![-2.0], 3, -2.0 / 3.0),
            (vec![f64::MAX, f64::MAX], 2, f64::MAX),
            (vec![5e-324], 2, 0.0),
            (vec![5e-324, 5e-324, 5e-324], 2, 1e-323),
            (vec![3.0, 4.0], 2, 3.5),
        ];
        for (values, count, expected) in cases {
            let sum = sum_of(&values);
            assert_eq!(
                sum.mean(count).to_bits(),
                expected.to_bits(),
                "{values:?} / {count}"
            );
        }
    }

    #[test]
    fn subtracting_undoes_adding() {
        let mut sum = sum_of(&[3.5, -1e-200, 7e300]);
        let before = sum.clone();
        let other = sum_of(&[1e-310, -4.0e150]);
        sum.add_sum(&other);
        assert_ne!(sum, before);
        sum.subtract_sum(&other);
        assert_eq!(sum, before);
        sum.subtract_sum(&before);
        assert!(sum.is_zero());
    }
}
