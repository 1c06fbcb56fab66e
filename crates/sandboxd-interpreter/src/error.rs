//! Errors of the code-interpreter server.

/// Everything that can go wrong; `Display` texts are what HTTP clients see.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A language name the server does not know.
    #[error(
        "Unsupported language {0:?}: supported languages are python, javascript (js), typescript (ts), r, java and bash"
    )]
    UnsupportedLanguage(String),
    /// The language is known but its kernel is not installed in this sandbox.
    #[error("The {language} kernel is not installed in this sandbox: {reason}")]
    NotInstalled {
        /// Normalised language.
        language: String,
        /// What is missing.
        reason: String,
    },
    /// The kernel process could not be started or did not answer.
    #[error("Failed to start the {language} kernel: {reason}")]
    KernelStart {
        /// Normalised language.
        language: String,
        /// Why.
        reason: String,
    },
    /// Talking to a running kernel failed.
    #[error("Kernel error: {0}")]
    Kernel(String),
    /// Bad configuration (flags, user).
    #[error("{0}")]
    Config(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
