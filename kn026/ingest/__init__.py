"""Layer 4: cohorts in: readers, the validating loader, the mapping wizard, OMOP and SDTM importers, the synthetic cohort. Imports core and below."""
