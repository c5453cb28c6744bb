#[path = "../../build/platform.rs"]
mod platform;

fn main() {
    platform::declare_linux_calls();
}
