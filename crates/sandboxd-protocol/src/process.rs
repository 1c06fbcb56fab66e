//! Messages of the envd `process.Process` service (`e2b-compat/envd.md` §5.1).
