//! The WGSL shaders, checked with naga (no GPU needed): every file parses and
//! validates, every file is embedded, and the Rust side agrees with the WGSL on
//! the uniform block's layout and the workgroup size.

use std::path::Path;

fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out.sort();
    out
}

fn module(name: &str, src: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(src)))
}

#[test]
fn every_wgsl_file_validates() {
    let files = shader_files();
    assert!(!files.is_empty(), "shaders/ holds the force pass");
    for (name, src) in &files {
        let m = module(name, src);
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&m)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(src)));
        assert!(!m.entry_points.is_empty(), "{name} has no entry point");
    }
}

#[cfg(feature = "gpu")]
mod embedded {
    use super::*;
    use neurograph::backend::gpu::{FORCES_WGSL, GpuParams, SHADERS, WORKGROUP_SIZE};

    #[test]
    fn every_file_is_embedded_as_it_is() {
        for (name, src) in shader_files() {
            let (_, embedded) = SHADERS
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} is not in gpu::SHADERS"));
            assert_eq!(*embedded, src, "{name}");
        }
    }

    #[test]
    fn workgroup_size_matches_the_rust_constant() {
        let m = module("forces.wgsl", FORCES_WGSL);
        // The host dispatches every density before any force.
        assert_eq!(neurograph::backend::gpu::ENTRY_POINTS, ["density", "main"]);
        // Every entry point the host dispatches, and no other.
        let names: Vec<&str> = m.entry_points.iter().map(|e| e.name.as_str()).collect();
        let mut expected = neurograph::backend::gpu::ENTRY_POINTS.to_vec();
        let mut found = names.clone();
        expected.sort_unstable();
        found.sort_unstable();
        assert_eq!(found, expected, "entry points {names:?}");
        for e in &m.entry_points {
            assert_eq!(e.workgroup_size, [WORKGROUP_SIZE, 1, 1], "{}", e.name);
        }
        let (_, c) = m
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some("WORKGROUP_SIZE"))
            .expect("const WORKGROUP_SIZE");
        match m.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => assert_eq!(v, WORKGROUP_SIZE),
            ref other => panic!("WORKGROUP_SIZE is {other:?}"),
        }
    }

    #[test]
    fn uniform_layout_matches_gpu_params() {
        let m = module("forces.wgsl", FORCES_WGSL);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(m.to_ctx()).expect("layout");
        let (handle, ty) = m
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .expect("struct Params");
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("Params is not a struct");
        };
        assert_eq!(*span as usize, size_of::<GpuParams>(), "size");
        assert_eq!(layouter[handle].size as usize, size_of::<GpuParams>());
        let rust = [
            ("n", std::mem::offset_of!(GpuParams, n)),
            ("first", std::mem::offset_of!(GpuParams, first)),
            ("propose", std::mem::offset_of!(GpuParams, propose)),
            ("max_degree", std::mem::offset_of!(GpuParams, max_degree)),
            ("groups_x", std::mem::offset_of!(GpuParams, groups_x)),
            ("k_field", std::mem::offset_of!(GpuParams, k_field)),
            ("k_core", std::mem::offset_of!(GpuParams, k_core)),
            ("core_radius", std::mem::offset_of!(GpuParams, core_radius)),
            ("k_link", std::mem::offset_of!(GpuParams, k_link)),
            ("within2", std::mem::offset_of!(GpuParams, within2)),
            ("k_density", std::mem::offset_of!(GpuParams, k_density)),
            (
                "inv_target_density",
                std::mem::offset_of!(GpuParams, inv_target_density),
            ),
        ];
        for (name, offset) in rust {
            let member = members
                .iter()
                .find(|mm| mm.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("Params.{name} missing in WGSL"));
            assert_eq!(member.offset as usize, offset, "Params.{name}");
        }
        // Nothing else (no padding: 12 four-byte fields fill 48 bytes).
        assert_eq!(members.len(), rust.len());
        assert_eq!(size_of::<GpuParams>(), 48);
    }

    #[test]
    fn the_resident_tick_matches_its_rust_side() {
        use neurograph::backend::gpu::resident::{
            BLOCK, ENTRY_BINDINGS, FAN, RESIDENT_ENTRY_POINTS, RESIDENT_WGSL, ResidentUniform,
        };
        let resident = module("resident.wgsl", RESIDENT_WGSL);
        let forces = module("forces.wgsl", FORCES_WGSL);
        let constant = |name: &str| {
            let (_, c) = resident
                .constants
                .iter()
                .find(|(_, c)| c.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("const {name}"));
            match resident.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::U32(v)) => v,
                ref other => panic!("{name} is {other:?}"),
            }
        };
        assert_eq!(constant("BLOCK"), BLOCK);
        assert_eq!(constant("FAN"), FAN);
        assert_eq!(constant("WORKGROUP_SIZE"), WORKGROUP_SIZE);
        // The uniform block: every Rust field at the WGSL member's offset.
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(resident.to_ctx()).expect("layout");
        let (handle, ty) = resident
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .expect("struct Params");
        let naga::TypeInner::Struct { members, .. } = &ty.inner else {
            panic!("Params is not a struct");
        };
        assert_eq!(layouter[handle].size as usize, size_of::<ResidentUniform>());
        use std::mem::offset_of;
        let rust = [
            ("n", offset_of!(ResidentUniform, n)),
            ("groups_x", offset_of!(ResidentUniform, groups_x)),
            ("blocks", offset_of!(ResidentUniform, blocks)),
            ("supers", offset_of!(ResidentUniform, supers)),
            ("cap", offset_of!(ResidentUniform, cap)),
            (
                "block_groups_x",
                offset_of!(ResidentUniform, block_groups_x),
            ),
            ("dt", offset_of!(ResidentUniform, dt)),
            ("keep", offset_of!(ResidentUniform, keep)),
            ("max_speed", offset_of!(ResidentUniform, max_speed)),
            ("skin", offset_of!(ResidentUniform, skin)),
            ("half_skin", offset_of!(ResidentUniform, half_skin)),
            ("full_only", offset_of!(ResidentUniform, full_only)),
            ("scale0", offset_of!(ResidentUniform, scale)),
            ("scale1", offset_of!(ResidentUniform, scale) + 16),
            ("lo0", offset_of!(ResidentUniform, lo)),
            ("lo1", offset_of!(ResidentUniform, lo) + 16),
            ("hi0", offset_of!(ResidentUniform, hi)),
            ("hi1", offset_of!(ResidentUniform, hi) + 16),
            (
                "inv_target_density",
                offset_of!(ResidentUniform, inv_target_density),
            ),
        ];
        assert_eq!(members.len(), rust.len());
        for (name, offset) in rust {
            let member = members
                .iter()
                .find(|mm| mm.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("Params.{name} missing in WGSL"));
            assert_eq!(member.offset as usize, offset, "Params.{name}");
        }
        // Each entry point's bind group holds exactly the bindings it uses.
        let validate = |m: &naga::Module| {
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(m)
            .expect("valid")
        };
        let infos = [
            (&resident, validate(&resident)),
            (&forces, validate(&forces)),
        ];
        for (k, entry) in RESIDENT_ENTRY_POINTS.iter().enumerate() {
            let (m, info) = infos
                .iter()
                .find(|(m, _)| m.entry_points.iter().any(|e| e.name == *entry))
                .unwrap_or_else(|| panic!("no shader has entry point {entry}"));
            let index = m
                .entry_points
                .iter()
                .position(|e| e.name == *entry)
                .unwrap();
            let used = info.get_entry_point(index);
            let mut bindings: Vec<u32> = m
                .global_variables
                .iter()
                .filter(|(h, _)| !used[*h].is_empty())
                .filter_map(|(_, g)| g.binding.as_ref().map(|b| b.binding))
                .collect();
            bindings.sort_unstable();
            assert_eq!(bindings, ENTRY_BINDINGS[k], "{entry}");
        }
        // Every entry point of resident.wgsl is dispatched.
        for e in &resident.entry_points {
            assert!(
                RESIDENT_ENTRY_POINTS.contains(&e.name.as_str()),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn bindings_match_the_rust_layout() {
        use neurograph::backend::gpu::{BINDINGS, BindingAccess};
        let m = module("forces.wgsl", FORCES_WGSL);
        let mut seen = vec![None; BINDINGS.len()];
        for (_, var) in m.global_variables.iter() {
            let Some(b) = &var.binding else { continue };
            assert_eq!(b.group, 0, "{:?}", var.name);
            let access = match var.space {
                naga::AddressSpace::Uniform => BindingAccess::Uniform,
                naga::AddressSpace::Storage { access } if access == naga::StorageAccess::LOAD => {
                    BindingAccess::Read
                }
                naga::AddressSpace::Storage { access }
                    if access == naga::StorageAccess::LOAD | naga::StorageAccess::STORE =>
                {
                    BindingAccess::ReadWrite
                }
                other => panic!("{:?}: address space {other:?}", var.name),
            };
            let slot = seen
                .get_mut(b.binding as usize)
                .unwrap_or_else(|| panic!("binding {} is not in BINDINGS", b.binding));
            assert!(slot.is_none(), "binding {} twice", b.binding);
            *slot = Some(access);
        }
        let wgsl: Vec<BindingAccess> = seen
            .into_iter()
            .map(|a| a.expect("every binding is declared"))
            .collect();
        assert_eq!(wgsl, BINDINGS);
    }

    #[test]
    fn link_ends_and_positions_match_the_wgsl_strides() {
        // LinkEnd { other, weight, rest }: 12 bytes; positions two vec4 per token.
        assert_eq!(size_of::<neurograph::physics::LinkEnd>(), 12);
        assert_eq!(size_of::<neurograph::model::math::Vec8>(), 32);
        assert_eq!(size_of::<neurograph::physics::TokenParams>(), 16);
        let m = module("forces.wgsl", FORCES_WGSL);
        let (h, _) = m
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("LinkEnd"))
            .expect("struct LinkEnd");
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(m.to_ctx()).expect("layout");
        assert_eq!(layouter[h].to_stride() as usize, 12);
        // The element strides of the per-token arrays, from the WGSL.
        let stride = |name: &str| -> u32 {
            let (_, var) = m
                .global_variables
                .iter()
                .find(|(_, v)| v.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{name}"));
            match m.types[var.ty].inner {
                naga::TypeInner::Array { stride, .. } => stride,
                ref other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(stride("pos") * 2, 32, "two vec4 per Vec8");
        assert_eq!(stride("force") * 2, 32);
        assert_eq!(
            stride("tok") as usize,
            size_of::<neurograph::physics::TokenParams>()
        );
        assert_eq!(stride("rows"), 16, "[u32; 4] per token");
        assert_eq!(stride("aux"), 8, "[u32; 2] per token");
        assert_eq!(stride("cand"), 4);
        assert_eq!(stride("rho"), 4, "f32 per token");
        assert_eq!(stride("links"), 12);
    }
}
