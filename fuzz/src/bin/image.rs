//! AFL++ entry point of `clipcap_fuzz::image` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::image(data));
}
