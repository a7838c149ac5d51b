//! A uniform grid of cells over a rectangle, each cell listing items (u32), stored
//! CSR-style: one lookup and one contiguous slice per query.

/// Cell layout: origin, cell size and counts. Coordinates are whatever the caller
/// uses (degrees for zones, plane metres for routes), x and y independently.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    inv_w: f64,
    inv_h: f64,
    nx: usize,
    ny: usize,
}

impl Layout {
    /// Cells of `w` x `h` (grown in proportion when needed to stay within `max_cells`)
    /// covering `[x0, x1] x [y0, y1]`.
    pub(crate) fn new(
        x0: f64,
        y0: f64,
        x1: f64,
        y1: f64,
        w: f64,
        h: f64,
        max_cells: usize,
    ) -> Self {
        let (mut w, mut h) = (w, h);
        let count = |w: f64, h: f64| {
            let nx = ((x1 - x0) / w).floor() as usize + 1;
            let ny = ((y1 - y0) / h).floor() as usize + 1;
            (nx, ny)
        };
        let (mut nx, mut ny) = count(w, h);
        while nx.saturating_mul(ny) > max_cells {
            w *= 1.5;
            h *= 1.5;
            (nx, ny) = count(w, h);
        }
        Self {
            x0,
            y0,
            w,
            h,
            inv_w: 1.0 / w,
            inv_h: 1.0 / h,
            nx,
            ny,
        }
    }

    /// Cell width.
    pub(crate) fn cell_w(&self) -> f64 {
        self.w
    }

    /// Column of `x`, clamped to the grid.
    pub(crate) fn col(&self, x: f64) -> usize {
        (((x - self.x0) * self.inv_w).floor().max(0.0) as usize).min(self.nx - 1)
    }

    /// Row of `y`, clamped to the grid.
    pub(crate) fn row(&self, y: f64) -> usize {
        (((y - self.y0) * self.inv_h).floor().max(0.0) as usize).min(self.ny - 1)
    }

    /// Cell index of a column and row.
    pub(crate) fn cell(&self, col: usize, row: usize) -> usize {
        row * self.nx + col
    }

    /// Centre of a cell.
    pub(crate) fn centre(&self, col: usize, row: usize) -> (f64, f64) {
        (
            self.x0 + (col as f64 + 0.5) * self.w,
            self.y0 + (row as f64 + 0.5) * self.h,
        )
    }

    /// Lower y edge of a row.
    pub(crate) fn row_y0(&self, row: usize) -> f64 {
        self.y0 + row as f64 * self.h
    }

    /// The cell containing `(x, y)`, if inside the grid.
    #[inline]
    pub(crate) fn cell_of(&self, x: f64, y: f64) -> Option<usize> {
        let cx = (x - self.x0) * self.inv_w;
        let cy = (y - self.y0) * self.inv_h;
        // Negated comparisons so NaN falls outside too.
        if !(cx >= 0.0 && cy >= 0.0 && cx < self.nx as f64 && cy < self.ny as f64) {
            return None;
        }
        Some(cy as usize * self.nx + cx as usize)
    }

    /// Builds the grid from `(cell, item)` pairs; items keep their order per cell.
    pub(crate) fn build(self, pairs: &[(u32, u32)]) -> CellGrid {
        let n = self.nx * self.ny;
        let mut starts = vec![0u32; n + 1];
        for &(c, _) in pairs {
            starts[c as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut items = vec![0u32; pairs.len()];
        for &(c, item) in pairs {
            let f = &mut fill[c as usize];
            items[*f as usize] = item;
            *f += 1;
        }
        CellGrid {
            layout: self,
            starts,
            items,
        }
    }
}

/// A built grid: the items of each cell.
#[derive(Debug, Clone)]
pub(crate) struct CellGrid {
    pub(crate) layout: Layout,
    starts: Vec<u32>,
    items: Vec<u32>,
}

impl CellGrid {
    /// Items of the cell containing `(x, y)`; `None` outside the grid.
    #[inline]
    pub(crate) fn items_at(&self, x: f64, y: f64) -> Option<&[u32]> {
        let c = self.layout.cell_of(x, y)?;
        Some(&self.items[self.starts[c] as usize..self.starts[c + 1] as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_items() {
        let l = Layout::new(0.0, 0.0, 10.0, 5.0, 2.0, 2.0, 1000);
        assert_eq!(l.cell_of(0.0, 0.0), Some(0));
        assert_eq!(l.cell_of(3.0, 2.5), Some(l.cell(1, 1)));
        assert_eq!(l.cell_of(-0.1, 1.0), None);
        assert_eq!(l.cell_of(f64::NAN, 1.0), None);
        let g = l.build(&[(0, 7), (4, 1), (0, 9)]);
        assert_eq!(g.items_at(1.0, 1.0), Some(&[7u32, 9][..]));
        assert_eq!(g.items_at(9.0, 1.0), Some(&[1u32][..]));
        assert_eq!(g.items_at(5.0, 1.0), Some(&[][..]));
    }

    #[test]
    fn cells_grow_to_respect_the_cap() {
        let l = Layout::new(0.0, 0.0, 1000.0, 1000.0, 1.0, 1.0, 10_000);
        assert!(l.nx * l.ny <= 10_000);
        assert!(l.cell_w() > 1.0);
    }
}
