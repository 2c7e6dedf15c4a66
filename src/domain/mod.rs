//! The bottom layer: validated types (`case`), the records tidings keeps
//! (`records`), diagnostics, the clock and id source, and small pure
//! helpers (SMS segments, signatures, page links, redaction, normalising what ticket
//! systems send). Imports nothing of the crate.

mod case;
pub mod clock;
mod diagnostics;
pub mod dsn;
mod input;
pub mod link;
pub mod normalise;
mod records;
pub mod redact;
pub mod segments;
pub mod signature;

pub use case::*;
pub use diagnostics::*;
pub use input::*;
pub use records::*;
