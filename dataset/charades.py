class CharadesDataset: pass
