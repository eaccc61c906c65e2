//! AFL++ entry point of `clipcap_fuzz::coco` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::coco(data));
}
