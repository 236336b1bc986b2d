//! Physical units as types, so a voltage cannot be passed where a current is expected.

use serde::{Deserialize, Serialize};

macro_rules! unit {
    ($(#[$doc:meta])* $name:ident, $suffix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub f64);

        impl $name {
            /// The raw value in this unit.
            pub fn get(self) -> f64 {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match f.precision() {
                    Some(p) => write!(f, "{:.*} {}", p, self.0, $suffix),
                    None => write!(f, "{} {}", self.0, $suffix),
                }
            }
        }
    };
}

unit!(
    /// Electric potential in volts.
    Volts, "V"
);
unit!(
    /// Current in amperes; positive means the pack is charging.
    Amps, "A"
);
unit!(
    /// Temperature in degrees Celsius.
    Celsius, "°C"
);
unit!(
    /// A percentage, 0 to 100.
    Percent, "%"
);
unit!(
    /// Charge in ampere-hours.
    AmpHours, "Ah"
);
