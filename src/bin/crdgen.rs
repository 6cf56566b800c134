//! `make crds`: every CRD as YAML, one `<group>_<plural>.yaml` per CRD into the directory given,
//! else all to stdout. A developer's tool: the CRDs ship as files in `crds/`, so the operator's
//! binary carries no schema generator or YAML writer.

use std::path::PathBuf;

use anyhow::Context;
use trainjob_operator::{api, crdgen};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::args_os().nth(1).map(PathBuf::from);
    for crd in api::crds() {
        let yaml = crdgen::to_yaml(&crd)?;
        match &out_dir {
            Some(dir) => {
                let path = dir.join(crdgen::file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
