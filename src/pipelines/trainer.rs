//! Which loop trains a run: the crate's step loop or burn-train's `Learner`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::train::latest_checkpoint;
use crate::train::learner::{LearnerLog, LEARNER_LOG_FILE};
use crate::{Error, Result};

/// Which loop trains a run (`--trainer`): the step loop ([`crate::train::train`]) or
/// burn-train's `Learner` ([`crate::train::learner`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Trainer {
    /// The crate's step loop: checkpoints every N optimizer steps, a stop checkpoints the
    /// step it is at, resume from any checkpoint, online projector fits, validation at any
    /// step.
    #[default]
    Loop,
    /// burn-train's SupervisedTraining and Learner: the same steps, checkpointed by
    /// burn-train's file checkpointer at the end of each window (burn-train epoch) of N
    /// steps; a stop ends the run at its last window.
    Learner,
}

impl Trainer {
    /// The step loop (the default, left out of written settings so runs written before
    /// the choice existed keep their fingerprint).
    pub fn is_loop(&self) -> bool {
        *self == Trainer::Loop
    }

    /// The name `--trainer` takes.
    pub fn name(self) -> &'static str {
        match self {
            Trainer::Loop => "loop",
            Trainer::Learner => "learner",
        }
    }
}

/// Whether the output folder `out` holds checkpoints `trainer` resumes from; an error when
/// they were written by the other loop.
pub(crate) fn resumable(out: &Path, trainer: Trainer) -> Result<bool> {
    let by_loop = out.join("checkpoints").is_dir();
    let by_learner = out.join(LEARNER_LOG_FILE).is_file();
    let other = match trainer {
        Trainer::Loop if by_learner => Some(Trainer::Learner),
        Trainer::Learner if by_loop => Some(Trainer::Loop),
        _ => None,
    };
    if let Some(other) = other {
        return Err(Error::file(
            out,
            format!(
                "holds a run trained with --trainer {}: resume it with --trainer {}",
                other.name(),
                other.name()
            ),
        ));
    }
    Ok(match trainer {
        Trainer::Loop => latest_checkpoint(out)?.is_some(),
        Trainer::Learner => LearnerLog::read(out)?.is_some_and(|l| !l.windows.is_empty()),
    })
}
