//! The disk headroom the pre-pull keeps (`--min-free-disk`): a pull is started only while the
//! image filesystem has more free space than this, so pre-pulling never pushes the node into the
//! kubelet's image garbage collection (which starts at `imageGCHighThresholdPercent`, 85 % used by
//! default: kubelet `pkg/kubelet/apis/config/v1beta1/defaults.go`). The default, 20 % free, keeps
//! usage five points below that threshold.

use crate::decide::runtime::ImageFsSpace;
use std::fmt;
use std::str::FromStr;

/// Free space to keep on the image filesystem: a share of its capacity or a number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFreeDisk {
    Percent(u8),
    Bytes(u64),
}

impl Default for MinFreeDisk {
    fn default() -> Self {
        Self::Percent(20)
    }
}

/// Why a `--min-free-disk` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadroomError {
    #[error(
        "--min-free-disk `{0}`: expected a percentage of the image filesystem (`15%`, 0-100) or a size (`20GiB`, `500MB`, bytes)"
    )]
    Invalid(String),
}

impl FromStr for MinFreeDisk {
    type Err = HeadroomError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || HeadroomError::Invalid(s.chars().take(64).collect());
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| invalid())?;
            return if p <= 100 {
                Ok(Self::Percent(p))
            } else {
                Err(invalid())
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" | "Ki" => 1 << 10,
            "MiB" | "Mi" => 1 << 20,
            "GiB" | "Gi" => 1 << 30,
            "TiB" | "Ti" => 1 << 40,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(factor)
            .map(Self::Bytes)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for MinFreeDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Percent(p) => write!(f, "{p}%"),
            Self::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl MinFreeDisk {
    /// Whether any space is kept (`0` and `0%` turn the check off).
    pub fn is_enabled(self) -> bool {
        !matches!(self, Self::Percent(0) | Self::Bytes(0))
    }

    /// The free bytes to keep on a filesystem of this size.
    pub fn bytes(self, space: ImageFsSpace) -> u64 {
        match self {
            Self::Percent(p) => {
                u64::try_from(u128::from(space.capacity_bytes) * u128::from(p) / 100)
                    .unwrap_or(u64::MAX)
            }
            Self::Bytes(b) => b,
        }
    }

    /// Why no pull may start with this much space, or `None` when one may.
    pub fn refuses(self, space: ImageFsSpace) -> Option<String> {
        let keep = self.bytes(space);
        (space.free_bytes <= keep && keep > 0).then(|| {
            format!(
                "not pulled: the image filesystem has {} free of {}, at or below the --min-free-disk headroom of {self} ({}); the next pass checks again",
                human(space.free_bytes),
                human(space.capacity_bytes),
                human(keep)
            )
        })
    }
}

fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / f64::from(1u32 << 30);
    format!("{gib:.2} GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        for (input, expected) in [
            ("15%", Some(MinFreeDisk::Percent(15))),
            ("100%", Some(MinFreeDisk::Percent(100))),
            ("0", Some(MinFreeDisk::Bytes(0))),
            ("20GiB", Some(MinFreeDisk::Bytes(20 << 30))),
            ("500MB", Some(MinFreeDisk::Bytes(500_000_000))),
            ("4096", Some(MinFreeDisk::Bytes(4096))),
            ("101%", None),
            ("-1%", None),
            ("20 parsecs", None),
            ("", None),
            ("99999999999999TiB", None),
        ] {
            assert_eq!(input.parse::<MinFreeDisk>().ok(), expected, "{input}");
        }
        let e = "lots".parse::<MinFreeDisk>().unwrap_err().to_string();
        assert!(e.contains("--min-free-disk") && e.contains("lots"), "{e}");
    }

    #[test]
    fn refusal_table() {
        let fs = |free, capacity| ImageFsSpace {
            free_bytes: free,
            capacity_bytes: capacity,
        };
        for (min, space, refused) in [
            (MinFreeDisk::Percent(20), fs(30, 100), false),
            (MinFreeDisk::Percent(20), fs(20, 100), true),
            (MinFreeDisk::Percent(20), fs(5, 100), true),
            (MinFreeDisk::Percent(100), fs(99, 100), true),
            (MinFreeDisk::Percent(0), fs(0, 100), false),
            (MinFreeDisk::Bytes(10), fs(11, 100), false),
            (MinFreeDisk::Bytes(10), fs(10, 100), true),
            (
                MinFreeDisk::Bytes(u64::MAX),
                fs(u64::MAX - 1, u64::MAX),
                true,
            ),
        ] {
            assert_eq!(min.refuses(space).is_some(), refused, "{min} {space:?}");
        }
        let m = MinFreeDisk::Percent(20)
            .refuses(fs(1 << 30, 10 << 30))
            .unwrap();
        assert!(
            m.contains("1.00 GiB free of 10.00 GiB") && m.contains("20%"),
            "{m}"
        );
    }
}
