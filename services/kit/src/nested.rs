//! A process's mark on the calls it makes to the platform, so that it knows its own calls to
//! itself when they come back in (in `up` every service is in one process).

use std::sync::OnceLock;

/// The header on every call a process makes to the platform (gRPC peers, the token endpoint,
/// the token keys), carrying [`mark`].
pub const HEADER: &str = "sharedcare-nested";

/// A random mark, one per process. A request that carries this process's own mark is one it
/// made to itself while answering another (in `up`, every service is in one process): it is
/// not counted against `max_in_flight`, so an admitted request never fails on its own inner
/// call. Another process's mark means nothing here, so each pod still limits what reaches it.
pub fn mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        let mut bytes = [0u8; 16];
        // No randomness at all is not a reason to stop: the mark only spares self-calls.
        let _ = getrandom::fill(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Whether `headers` carry this process's own [`mark`].
pub fn is_nested(headers: &http::HeaderMap) -> bool {
    headers.get(HEADER).is_some_and(|v| v.as_bytes() == mark().as_bytes())
}
