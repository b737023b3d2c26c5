      *================================================================*
      * T033 - PAIEMENT (PAYMENT OF A WINNING TICKET).                 *
      * PAYMENT-REF IS READ AS CARD-PAYMENT WHEN PAYMENT-METHOD = 'C', *
      * AS CASH-PAYMENT WHEN 'K', AS PLAIN TEXT OTHERWISE.             *
      *================================================================*
       01  PAYMENT-FRAME.
           05  BET-ID                  PIC 9(12).
           05  TICKET-NO               PIC 9(9) COMP-3.
           05  AMOUNT                  PIC S9(9)V99.
           05  PAYMENT-METHOD          PIC X.
           05  PAYMENT-REF             PIC X(12).
           05  CARD-PAYMENT REDEFINES PAYMENT-REF.
               10  CARD-LAST4          PIC 9(4).
               10  AUTH-CODE           PIC X(8).
           05  CASH-PAYMENT REDEFINES PAYMENT-REF.
               10  DRAWER-NO           PIC 9(2).
               10  CASHIER-ID          PIC X(6).
               10  FILLER              PIC X(4).
           05  CURRENCY                PIC X(3).
