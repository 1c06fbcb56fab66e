//! Messages of the envd `filesystem.Filesystem` service (`e2b-compat/envd.md` §4.1).
