//! 8-dimensional vector math on top of glam.
//!
//! [`Vec8`] is two SIMD [`Vec4`] halves, so every operation is two SSE/NEON
//! instructions. The eight semantic axes are named by [`Axis`].

use glam::Vec4;
use serde::{Deserialize, Serialize};
use std::ops::{Add, AddAssign, Index, IndexMut, Mul, MulAssign, Neg, Sub, SubAssign};

/// The number of dimensions of the semantic space.
pub const DIM: usize = 8;

/// The eight named axes of the semantic space, in storage order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Axis 0.
    Physical,
    /// Axis 1.
    Sensory,
    /// Axis 2.
    Motor,
    /// Axis 3.
    Emotional,
    /// Axis 4.
    Cognitive,
    /// Axis 5.
    Social,
    /// Axis 6.
    Temporal,
    /// Axis 7.
    Abstract,
}

impl Axis {
    /// All axes, in storage order.
    pub const ALL: [Axis; DIM] = [
        Axis::Physical,
        Axis::Sensory,
        Axis::Motor,
        Axis::Emotional,
        Axis::Cognitive,
        Axis::Social,
        Axis::Temporal,
        Axis::Abstract,
    ];

    /// The axis' storage index (0..8).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The axis' lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Axis::Physical => "physical",
            Axis::Sensory => "sensory",
            Axis::Motor => "motor",
            Axis::Emotional => "emotional",
            Axis::Cognitive => "cognitive",
            Axis::Social => "social",
            Axis::Temporal => "temporal",
            Axis::Abstract => "abstract",
        }
    }
}

/// A vector in the 8-dimensional semantic space. Laid out as eight `f32`s in
/// axis order (`repr(C)`, no padding), so slices of it upload to the GPU as they are.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    bytemuck::Pod,
    bytemuck::Zeroable,
)]
#[serde(from = "[f32; 8]", into = "[f32; 8]")]
#[repr(C)]
pub struct Vec8 {
    /// Axes 0..4.
    pub lo: Vec4,
    /// Axes 4..8.
    pub hi: Vec4,
}

impl Vec8 {
    /// All zeros.
    pub const ZERO: Vec8 = Vec8::splat(0.0);
    /// All ones.
    pub const ONE: Vec8 = Vec8::splat(1.0);

    /// A vector from its two halves.
    #[inline]
    pub const fn from_halves(lo: Vec4, hi: Vec4) -> Self {
        Self { lo, hi }
    }

    /// Every component set to `v`.
    #[inline]
    pub const fn splat(v: f32) -> Self {
        Self {
            lo: Vec4::splat(v),
            hi: Vec4::splat(v),
        }
    }

    /// A vector from an array, axis order.
    #[inline]
    pub const fn from_array(a: [f32; 8]) -> Self {
        Self {
            lo: Vec4::from_array([a[0], a[1], a[2], a[3]]),
            hi: Vec4::from_array([a[4], a[5], a[6], a[7]]),
        }
    }

    /// The components as an array, axis order.
    #[inline]
    pub fn to_array(self) -> [f32; 8] {
        let l = self.lo.to_array();
        let h = self.hi.to_array();
        [l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3]]
    }

    /// The unit vector along `axis`.
    pub fn axis(axis: Axis) -> Self {
        let mut v = Self::ZERO;
        v[axis.index()] = 1.0;
        v
    }

    /// Dot product.
    #[inline]
    pub fn dot(self, o: Self) -> f32 {
        (self.lo * o.lo + self.hi * o.hi).element_sum()
    }

    /// Squared Euclidean length.
    #[inline]
    pub fn length_squared(self) -> f32 {
        self.dot(self)
    }

    /// Euclidean length.
    #[inline]
    pub fn length(self) -> f32 {
        self.length_squared().sqrt()
    }

    /// Component-wise product.
    #[inline]
    pub fn mul_elem(self, o: Self) -> Self {
        Self {
            lo: self.lo * o.lo,
            hi: self.hi * o.hi,
        }
    }

    /// Component-wise minimum.
    #[inline]
    pub fn min(self, o: Self) -> Self {
        Self {
            lo: self.lo.min(o.lo),
            hi: self.hi.min(o.hi),
        }
    }

    /// Component-wise maximum.
    #[inline]
    pub fn max(self, o: Self) -> Self {
        Self {
            lo: self.lo.max(o.lo),
            hi: self.hi.max(o.hi),
        }
    }

    /// Component-wise clamp to `[min, max]`.
    #[inline]
    pub fn clamp(self, min: Self, max: Self) -> Self {
        self.max(min).min(max)
    }

    /// Whether every component is finite.
    #[inline]
    pub fn is_finite(self) -> bool {
        self.lo.is_finite() && self.hi.is_finite()
    }

    /// The largest component.
    #[inline]
    pub fn max_element(self) -> f32 {
        self.lo.max(self.hi).max_element()
    }

    /// The smallest component.
    #[inline]
    pub fn min_element(self) -> f32 {
        self.lo.min(self.hi).min_element()
    }
}

impl From<[f32; 8]> for Vec8 {
    fn from(a: [f32; 8]) -> Self {
        Vec8::from_array(a)
    }
}

impl From<Vec8> for [f32; 8] {
    fn from(v: Vec8) -> Self {
        v.to_array()
    }
}

impl Index<usize> for Vec8 {
    type Output = f32;
    #[inline]
    fn index(&self, i: usize) -> &f32 {
        if i < 4 { &self.lo[i] } else { &self.hi[i - 4] }
    }
}

impl IndexMut<usize> for Vec8 {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut f32 {
        if i < 4 {
            &mut self.lo[i]
        } else {
            &mut self.hi[i - 4]
        }
    }
}

impl Add for Vec8 {
    type Output = Vec8;
    #[inline]
    fn add(self, o: Vec8) -> Vec8 {
        Vec8 {
            lo: self.lo + o.lo,
            hi: self.hi + o.hi,
        }
    }
}

impl Sub for Vec8 {
    type Output = Vec8;
    #[inline]
    fn sub(self, o: Vec8) -> Vec8 {
        Vec8 {
            lo: self.lo - o.lo,
            hi: self.hi - o.hi,
        }
    }
}

impl Mul<f32> for Vec8 {
    type Output = Vec8;
    #[inline]
    fn mul(self, s: f32) -> Vec8 {
        Vec8 {
            lo: self.lo * s,
            hi: self.hi * s,
        }
    }
}

impl Neg for Vec8 {
    type Output = Vec8;
    #[inline]
    fn neg(self) -> Vec8 {
        Vec8 {
            lo: -self.lo,
            hi: -self.hi,
        }
    }
}

impl AddAssign for Vec8 {
    #[inline]
    fn add_assign(&mut self, o: Vec8) {
        self.lo += o.lo;
        self.hi += o.hi;
    }
}

impl SubAssign for Vec8 {
    #[inline]
    fn sub_assign(&mut self, o: Vec8) {
        self.lo -= o.lo;
        self.hi -= o.hi;
    }
}

impl MulAssign<f32> for Vec8 {
    #[inline]
    fn mul_assign(&mut self, s: f32) {
        self.lo *= s;
        self.hi *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_round_trip_and_indexing() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let v = Vec8::from_array(a);
        assert_eq!(v.to_array(), a);
        for (i, x) in a.iter().enumerate() {
            assert_eq!(v[i], *x);
        }
        assert_eq!(v[Axis::Abstract.index()], 8.0);
    }

    #[test]
    fn dot_and_length_match_scalar_code() {
        let a = Vec8::from_array([1.0, -2.0, 3.0, 0.5, 0.0, 4.0, -1.0, 2.0]);
        let b = Vec8::from_array([0.5, 1.0, -1.0, 2.0, 3.0, 0.0, 1.0, 1.0]);
        let scalar: f32 = a
            .to_array()
            .iter()
            .zip(b.to_array())
            .map(|(x, y)| x * y)
            .sum();
        assert!((a.dot(b) - scalar).abs() < 1e-6);
        assert!((Vec8::axis(Axis::Motor).length() - 1.0).abs() < 1e-7);
        assert_eq!((a - a).length_squared(), 0.0);
    }

    #[test]
    fn serde_as_plain_array() {
        let v = Vec8::from_array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, "[1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0]");
        let back: Vec8 = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn finiteness() {
        assert!(Vec8::ONE.is_finite());
        let mut v = Vec8::ONE;
        v[6] = f32::NAN;
        assert!(!v.is_finite());
    }
}
