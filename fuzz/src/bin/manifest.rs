//! AFL++ entry point of `clipcap_fuzz::manifest` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::manifest(data));
}
