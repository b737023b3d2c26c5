      *================================================================*
      * T031 - PARI (BET).  REQUEST Q FROM THE TERMINAL, RESPONSE R    *
      * ECHOES THE BET WITH THE CENTRAL SYSTEM'S VERDICT.  40-BYTE     *
      * HEADER + 98 + 8 X HORSE-COUNT BYTES: 200 BYTES WITH 8 HORSES.  *
      *================================================================*
       01  BET-FRAME.
           05  BET-ID                  PIC 9(12).
           05  RACE.
               10  RACE-DATE           PIC 9(8).
               10  REUNION             PIC 9(2).
               10  COURSE              PIC 9(2).
           05  BET-TYPE                PIC X(12).
           05  STAKE                   PIC S9(7)V99 COMP-3.
           05  CHANNEL                 PIC X.
           05  POINT-OF-SALE           PIC X(20).
           05  BETTOR-NAME             PIC X(22).
           05  BET-DETAIL.
      *        REQUEST-DATA WHEN DIRECTION = 'Q', RESPONSE-DATA WHEN 'R'
               10  REQUEST-DATA.
                   15  PAYMENT-MODE    PIC X.
                   15  FLEXI-PERCENT   PIC 9(3) COMP-3.
                   15  FILLER          PIC X(7).
               10  RESPONSE-DATA REDEFINES REQUEST-DATA.
                   15  STATUS-CODE     PIC X(2).
                   15  REJECT-REASON   PIC 9(4) COMP.
                   15  TICKET-NO       PIC 9(9) COMP-3.
                   15  FILLER          PIC X.
           05  HORSE-COUNT             PIC 9(2).
           05  HORSES OCCURS 1 TO 8 TIMES DEPENDING ON HORSE-COUNT.
               10  HORSE-NO            PIC 9(2).
               10  HORSE-ODDS          PIC S9(5)V99 COMP-3.
               10  HORSE-FLAGS         PIC X(2).
