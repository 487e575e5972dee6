use super::*;

fn bpf(priority: u16, handle: u32, name: &str) -> Filter {
    Filter {
        priority,
        handle,
        kind: "bpf".into(),
        name: Some(name.into()),
        program_id: Some(7),
    }
}

#[test]
fn ours_first_is_kept() {
    let filters = [
        bpf(1, 0x524d, "pol_to_pod"),
        bpf(1, 1, "cil_to_container-lxc1"),
    ];
    assert_eq!(plan(&filters, "pol_to_pod"), Plan::Keep);
}

#[test]
fn missing_is_added_under_a_free_handle() {
    assert_eq!(plan(&[], "pol_to_pod"), Plan::Add(0x524d));
    // Another program at priority 1 with our first handle (unlikely, but not ours to remove).
    let filters = [bpf(1, 0x524d, "someone_else")];
    assert_eq!(plan(&filters, "pol_to_pod"), Plan::Add(0x524e));
    // The other direction's program is not this one.
    let filters = [bpf(1, 0x524d, "pol_from_pod")];
    assert_eq!(plan(&filters, "pol_to_pod"), Plan::Add(0x524e));
}

#[test]
fn a_filter_added_after_ours_at_our_priority_moves_ours_to_the_front() {
    // The AWS network policy agent's filter (priority 1, handle 1), added after ours: cls_bpf
    // runs the newest first.
    let filters = [bpf(1, 1, "handle_ingress"), bpf(1, 0x524d, "pol_to_pod")];
    assert_eq!(
        plan(&filters, "pol_to_pod"),
        Plan::MoveToFront(0x524e, 0x524d)
    );
    let filters = [bpf(1, 1, "handle_ingress"), bpf(1, 0x524e, "pol_to_pod")];
    assert_eq!(
        plan(&filters, "pol_to_pod"),
        Plan::MoveToFront(0x524d, 0x524e)
    );
}

#[test]
fn only_bpf_filters_at_our_priority_and_handles_are_ours() {
    assert!(bpf(1, 0x524d, "pol_to_pod").is_ours("pol_to_pod"));
    assert!(!bpf(2, 0x524d, "pol_to_pod").is_ours("pol_to_pod"));
    assert!(!bpf(1, 1, "pol_to_pod").is_ours("pol_to_pod"));
    let mut u32_filter = bpf(1, 0x524d, "pol_to_pod");
    u32_filter.kind = "u32".into();
    assert!(!u32_filter.is_ours("pol_to_pod"));
}
